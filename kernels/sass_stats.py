"""Registers and stack (register spills) of the transform kernels, compiled for a Hopper
GPU (sm_90) on a machine without one: a development tool.

    python -P -m tokenbits.kernels.sass_stats [--all] [--json OUT]
    python -P -m tokenbits.kernels.sass_stats --ones

Triton compiles each launch ahead of time (``triton.compile`` with a GPUTarget, the
arguments a launch would specialise as divisible by 16 marked so), and ``cuobjdump
-res-usage`` (shipped with Triton) reads the cubin's registers per thread and stack
bytes: a stack frame in these kernels is register spills.  This is how the limb GEMM's
spills were found (kernels/transform.py, ``_inverse_kernel``): not a timing, but a cause
of slow kernels that needs no GPU.  The counts are those of this machine's Triton; the
GPU machines run another version (shared/TRITON-NOTES.md).  Their version compiles here
too, in a virtual environment of its own (seen with Triton 3.6.0 on 2026-12-07; the
counts differ: 254 registers for the default launch where 3.9 uses 180):

    python3 -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0 torch==2.13.0 \
        numpy setuptools
    /tmp/t36/bin/pip install --no-deps --no-build-isolation --target /tmp/t36pkg .
    PYTHONPATH=/tmp/t36pkg /tmp/t36/bin/python -P -m tokenbits.kernels.sass_stats --all

Run it with TRITON_INTERPRET unset (the interpreter's kernels cannot be compiled).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

INVERSE_SIG = dict(y_ptr="*i8", blk_ptr="*i32", basis_ptr="*i8", mean_ptr="*i64",
                   out_ptr="*fp16", out_row_ptr="*i64", R="i32", KP="i32", D="i32", NBLK="i32",
                   HMAX="i32", scale="fp32")
LEVELS_SIG = dict(sym_ptr="*i16", chain_ptr="*i64", delta_ptr="*i32", code_ptr="*i32",
                  fac_ptr="*fp64", esc_ptr="*i32", uext_ptr="*i32", y_ptr="*i8",
                  ymax_ptr="*i32", status_ptr="*i32", R="i32", K="i32", KP="i32", NT="i32")

YLIMBS_SIG = dict(lev_ptr="*fp32", delta_ptr="*i32", code_ptr="*i32", fac_ptr="*fp64",
                  y_ptr="*i8", blk_ptr="*i32", status_ptr="*i32", R="i32", K="i32", KP="i32",
                  NBLK="i32")
COUNTS_SIG = dict(ymax_ptr="*i32", y_ptr="*i8", blk_ptr="*i32", status_ptr="*i32", R="i32",
                  K="i32", KP="i32", NT="i32", NBLK="i32")
SIMILARITY_SIG = dict(q_ptr="*i8", norm_ptr="*fp64", a_ptr="*i64", b_ptr="*i64",
                      out_ptr="*i32", R="i32", DP="i32", MA="i32", MB="i32")


def cuobjdump() -> Path:
    import triton
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def compile_stats(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int = 3,
                  not_divisible=(), arch: int = 90) -> dict:
    """{registers, stack_bytes, shared_bytes} of ``fn`` compiled for sm_``arch``: every
    pointer and i32 argument taken as divisible by 16 (as a launch specialises the
    batch's aligned tensors and sizes) except ``not_divisible``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items()
             if (t.startswith("*") or t == "i32") and n not in not_divisible}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(k.asm["cubin"])
        usage = subprocess.run([str(cuobjdump()), "-res-usage", str(path)], check=True,
                               capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return dict(registers=int(m.group(1)), stack_bytes=int(m.group(2)),
                shared_bytes=int(k.metadata.shared))


def inverse_name(label: str, f64: bool, kext: bool, high: bool, horner: bool = False) -> str:
    """The report's name of an _inverse_kernel launch ("inverse default F64 KEXT", ...)."""
    return (f"inverse {label}{' F64' if f64 else ''}{' KEXT' if kext else ''}"
            f"{' HORNER' if horner else ''}{' high' if high else ''}")


def launches(everything: bool = False) -> list:
    """(name, kernel, signature, constexprs, num_warps, num_stages, not_divisible) of the
    default launches (and with ``everything``, bench_gpu's sweep of the limb GEMM)."""
    from . import transform as tk
    v = dict(tk.TRANSFORM_VARIANT)
    shapes = [("default", v)]
    if everything:
        from .bench_gpu import GEMM_SWEEP
        keys = ("BM", "BN", "BK", "num_warps", "num_stages")
        seen = {tuple(v[k] for k in keys)}
        for g in GEMM_SWEEP:
            s = dict(v, **(g or {}))
            key = tuple(s[k] for k in keys)
            if key not in seen:
                seen.add(key)
                shapes.append((f"BM {s['BM']} BN {s['BN']} BK {s['BK']} w{s['num_warps']} "
                               f"s{s['num_stages']}", s))
    out = []
    for label, s in shapes:
        for f64, kext, high, horner in ((False, False, False, False), (False, False, True, False),
                                        (True, False, False, False), (True, False, True, False),
                                        (False, True, False, False), (True, True, False, False),
                                        (True, True, False, True), (True, True, True, True)):
            c = dict(NB=1, OUT=1, LB=tk.LIMB_ROWS, BM=s["BM"], BN=s["BN"], BK=s["BK"],
                     F64=f64, HIGH=high, KEXT=kext, HORNER=horner)
            out.append((inverse_name(label, f64, kext, high, horner), tk._inverse_kernel,
                        INVERSE_SIG, c, s["num_warps"], s["num_stages"], ()))
    lv = tk.LEVELS_VARIANT
    for label, pf in (("default", lv["LEVELS_PF"]), ("PF 4", 4)):
        out.append((f"levels_limbs {label}", tk._levels_limbs_kernel, LEVELS_SIG,
                    dict(SCAN=True, BC=lv["LEVELS_BC"], PF=pf), lv["LEVELS_WARPS"], 1,
                    ("K", "NT")))
    return out


def one_cases() -> list:
    """(name, kernel, signature, constexprs, num_warps) of the kernels whose integer
    arguments :func:`ones` sets to 1 in turn: the transform decode's four kernels at their
    default launches (the limb GEMM also with HORNER and as the high launch) and the
    pruning's similarity kernel."""
    from . import prune
    from . import transform as tk
    v, lv = tk.TRANSFORM_VARIANT, tk.LEVELS_VARIANT
    inv = dict(NB=1, OUT=1, LB=tk.LIMB_ROWS, BM=v["BM"], BN=v["BN"], BK=v["BK"], F64=v["F64"],
               HIGH=False, KEXT=v["KEXT"], HORNER=False)
    return [
        ("inverse", tk._inverse_kernel, INVERSE_SIG, inv, v["num_warps"]),
        ("inverse HORNER", tk._inverse_kernel, INVERSE_SIG, dict(inv, HORNER=True),
         v["num_warps"]),
        ("inverse high", tk._inverse_kernel, INVERSE_SIG, dict(inv, HIGH=True), v["num_warps"]),
        ("ylimbs", tk._ylimbs_kernel, YLIMBS_SIG, dict(LB=tk.LIMB_ROWS, BK=32), 8),
        ("levels_limbs", tk._levels_limbs_kernel, LEVELS_SIG,
         dict(SCAN=True, BC=lv["LEVELS_BC"], PF=lv["LEVELS_PF"]), lv["LEVELS_WARPS"]),
        ("limb_counts", tk._limb_counts_kernel, COUNTS_SIG,
         dict(LB=tk.LIMB_ROWS, BC=lv["LEVELS_BC"], NTP=8), 4),
        ("similarity", prune._similarity_kernel, SIMILARITY_SIG,
         dict(LEVELS=True, BI=32, BJ=32, BK=64), 4)]


def ones(cases=None) -> list:
    """Compile each kernel of ``cases`` (default :func:`one_cases`) once for each of its
    integer arguments equal to 1: a launch passes such an argument to the compiler as the
    constant 1, not as an i32 (Triton specialises it; the interpreter never does), so
    code that calls a method of it (``R.to(...)``) fails to compile only on a GPU, and
    only for that launch (one decoded row, say).  Returns [(kernel, argument, the
    compiler's message, or None where it compiled)]."""
    out = []
    for name, fn, sig, consts, warps in (cases or one_cases()):
        for arg in (n for n, t in sig.items() if t == "i32"):
            try:
                compile_stats(fn, sig, dict(consts, **{arg: 1}), warps, not_divisible=(arg,))
                out.append((name, arg, None))
            except Exception as e:            # the compiler's errors have no common class
                out.append((name, arg, f"{type(e).__name__}: {str(e).strip()[-300:]}"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all", action="store_true", help="also bench_gpu's sweep of launch shapes")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON ('-': stdout)")
    p.add_argument("--ones", action="store_true",
                   help="instead: compile each kernel with each integer argument equal to 1 "
                        "(ones()); exit status 1 where one fails")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("sass_stats: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)",
              file=sys.stderr)
        return 2
    if a.ones:
        res = ones()
        for name, arg, err in res:
            print(f"{name:16s} {arg} = 1: {err or 'compiles'}")
        return 1 if any(err for _, _, err in res) else 0
    res = {}
    for name, fn, sig, consts, warps, stages, nd in launches(a.all):
        res[name] = dict(compile_stats(fn, sig, consts, warps, stages, nd), num_warps=warps)
        if a.json != "-":
            r = res[name]
            print(f"{name:45s} {warps} warps: {r['registers']:3d} registers, "
                  f"{r['stack_bytes']:4d} stack bytes, {r['shared_bytes']:6d} shared bytes",
                  flush=True)
    if a.json:
        text = json.dumps(res, indent=1)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
