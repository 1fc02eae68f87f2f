"""How a compile quantizes its weights, from its options: the rounding method (`--quant-method`), whether AWQ's
clipping search runs, and the check of `--budget-bits`. The driver resolves these before the passes run (it
skips the rescaling pass a method leaves out); the passes read the results from ctx.options.
"""
from __future__ import annotations

from ..errors import TccError


# --quant-method: round to nearest; the scheme's rescaling (AWQ for the int4 schemes, SmoothQuant for w8a8)
# then nearest; GPTQ's error-compensating rounding (passes/gptq.py), alone or after the rescaling.
QUANT_METHODS = ("rtn", "awq", "smoothquant", "gptq", "awq+gptq", "smoothquant+gptq")
RESCALING = ("awq", "smoothquant")
# AWQ's clipping search is off unless asked for. On the demo's held-out text (w4a8) it gains little within
# the 256 tokens the model was trained on (windows of 256: AWQ +1.92% -> +1.87% over fp32, AWQ+GPTQ +1.47% ->
# +1.25%), loses much beyond them (windows of 1024: AWQ +3.92% -> +5.12%, AWQ+GPTQ +2.29% -> +4.47%) and
# makes AWQ's compile ~4x slower (issue 23's measurements).
AWQ_CLIP_DEFAULT = False


def quant_method(opts) -> str | None:
    """The --quant-method a compile of resolved options uses (None: nothing is quantized), or a TccError
    naming a bad combination."""
    from .schemes import get_scheme

    scheme = get_scheme(opts.qm)
    m = opts.quant_method
    if m is not None and m not in QUANT_METHODS:
        raise TccError(f"unknown --quant-method {m!r}; known: {', '.join(QUANT_METHODS)}")
    if scheme.weight_bits is None:
        if m is not None:
            raise TccError(f"--quant-method does not apply to --qm {opts.qm}: it quantizes no weights")
        if opts.awq_clip:
            raise TccError(f"--awq-clip does not apply to --qm {opts.qm}: it quantizes no weights")
        return None
    if m is None:
        m = scheme.calibration if opts.calib else "rtn"
    rescale = next((p for p in m.split("+") if p in RESCALING), None)
    if rescale is not None and rescale != scheme.calibration:
        raise TccError(f"--quant-method {m} does not apply to --qm {opts.qm}: its weights are rescaled by "
                       f"{scheme.calibration} (--quant-method {scheme.calibration} or {scheme.calibration}+gptq)")
    if m == "rtn" and opts.calib:
        raise TccError("--quant-method rtn uses no calibration data; leave out --calib")
    if m != "rtn" and not opts.calib:
        raise TccError(f"--quant-method {m} needs calibration data (--calib FILE)")
    if opts.awq_clip and "awq" not in m.split("+"):
        raise TccError(f"--awq-clip needs AWQ (--qm {opts.qm} rounds with {m}"
                       + ("; give --calib FILE)" if not opts.calib else ")"))
    return m


def awq_clip(opts, method: str | None) -> bool:
    """Whether AWQ's clipping search runs: where AWQ runs, --awq-clip / --no-awq-clip, else AWQ_CLIP_DEFAULT."""
    if not (method and "awq" in method.split("+")):
        return False
    return AWQ_CLIP_DEFAULT if opts.awq_clip is None else bool(opts.awq_clip)


def check_budget_option(opts) -> None:
    """--budget-bits: a number or 'pure' (passes/bit_allocation.py), and only for a scheme with 4-bit weights."""
    from .bit_allocation import check_budget
    from .schemes import get_scheme

    check_budget(opts.budget_bits)
    bits = get_scheme(opts.qm).weight_bits
    if opts.budget_bits is not None and bits != 4:
        raise TccError(f"--budget-bits applies to the schemes with 4-bit weights (w4a8, w4a32, w4a16), not "
                       f"--qm {opts.qm}")
