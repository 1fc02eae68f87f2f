"""Prints how many ONNX node tests tcc supports (and passes) and how many it refuses."""
from collections import Counter


def pytest_terminal_summary(terminalreporter):
    counts: Counter = Counter()
    for reports in terminalreporter.stats.values():
        for r in reports:
            if getattr(r, "when", None) != "call":
                continue
            for key, value in getattr(r, "user_properties", []):
                if key == "conformance" and r.passed:
                    counts[value] += 1
    if counts:
        terminalreporter.write_line(f"ONNX node tests: {counts['passed']} supported-passing, "
                                    f"{counts['refused']} refused")
