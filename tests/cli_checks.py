"""What every CLI failure must look like: a non-zero exit that is not an internal error (70), and exactly one
`tcc: error: ...` line, the last on stderr (progress lines may come before it), with no traceback."""
from __future__ import annotations


def one_line_error(proc, code: int | None = None, *needles: str) -> str:
    """Check `proc` (a CompletedProcess with text output) and return its error line. `code`: the exit code it
    must have (None: any but 0 and 70); `needles`: texts the line must contain."""
    if code is None:
        assert proc.returncode not in (0, 70), (proc.returncode, proc.stdout, proc.stderr)
    else:
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("tcc: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("tcc: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]
