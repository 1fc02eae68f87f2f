"""Prints how many ONNX node tests tcc supports (and passes) and how many it refuses, per path."""
from collections import Counter

PATHS = {"conformance": "interpreter", "conformance-compiled": "compiled x86"}


def pytest_terminal_summary(terminalreporter):
    counts: Counter = Counter()
    for reports in terminalreporter.stats.values():
        for r in reports:
            if getattr(r, "when", None) != "call" or not r.passed:
                continue
            for key, value in getattr(r, "user_properties", []):
                if key in PATHS:
                    counts[key, value] += 1
    for key, label in PATHS.items():
        if counts[key, "passed"] or counts[key, "refused"]:
            terminalreporter.write_line(f"ONNX node tests ({label}): {counts[key, 'passed']} supported-passing, "
                                        f"{counts[key, 'refused']} refused")
