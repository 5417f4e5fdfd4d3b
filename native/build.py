"""Build libtkb (native/src) with the machine's C compiler: ``libtkb.so`` and ``tkbdec``.

Used by ``setup.py`` (``pip install .`` / ``pip install -e .``: the files land in the
package ``tokenbits.native``) and by hand::

    python3 native/build.py OUTDIR [--sanitize] [--cc CC]

Needs only a C11 compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) and POSIX threads:
no Python headers (the binding uses ctypes).  Without a compiler nothing is built and the
package reports the native backend as unavailable (``tkb backends``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = sorted((HERE / "src").glob("*.c"))
TOOL = HERE / "tools" / "tkbdec.c"
# -ffp-contract=off: clause 3.2, no fused operation; no -ffast-math, no -march: the AVX2
# paths are chosen at run time (target attributes)
CFLAGS = ["-std=c11", "-O2", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing",
          "-Wall", "-Wextra", "-pthread"]
LIBS = ["-lm"]           # log2 (the encoder's table grouping, src/enc_tables.c)
SANITIZE = ["-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def compiler() -> str | None:
    """The C compiler to use, or None."""
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc.split()[0]):
            return cc
    return None


def build(outdir, cc: str | None = None, sanitize: bool = False, quiet: bool = True) -> list:
    """Compile into ``outdir``; returns the paths built.  Raises RuntimeError when the
    compiler fails, FileNotFoundError when there is none."""
    cc = cc or compiler()
    if cc is None:
        raise FileNotFoundError("no C compiler (set CC, or install cc/gcc/clang)")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    flags = CFLAGS + (SANITIZE if sanitize else [])
    lib, exe = out / "libtkb.so", out / "tkbdec"
    cmds = [cc.split() + flags + ["-shared", "-o", str(lib) + ".tmp"] + [str(s) for s in SOURCES]
            + LIBS,
            cc.split() + flags + ["-o", str(exe) + ".tmp", str(TOOL)] + [str(s) for s in SOURCES]
            + LIBS]
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{r.stderr[-3000:]}")
        if not quiet and r.stderr:
            print(r.stderr, file=sys.stderr)
    os.replace(str(lib) + ".tmp", lib)
    os.replace(str(exe) + ".tmp", exe)
    return [lib, exe]


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--cc")
    ap.add_argument("--sanitize", action="store_true", help="ASan + UBSan build")
    a = ap.parse_args(argv)
    try:
        for p in build(a.outdir, a.cc, a.sanitize, quiet=False):
            print(p)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"native/build.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
