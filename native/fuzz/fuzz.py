"""Build and run the libFuzzer harness of libtkb (``make fuzz-native``; CI runs it briefly).

    python3 native/fuzz/fuzz.py [--seconds S] [--jobs N]

Needs clang (``-fsanitize=fuzzer,address,undefined``); without it, says so and exits 0
(``--require-clang``: exits 1).  The seed corpus is the conformance suite, each stream
behind a few mode bytes (see fuzz_decode.c).  Every crashing input is kept as a regression:
``tests/regressions/native-<sha256>.tkb`` (the stream, without the mode byte) and ``.txt``
(the mode byte and the sanitizer report), which tests/test_native.py decodes with the
sanitizer build and the reference.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NATIVE = HERE.parent
ROOT = NATIVE.parent
BUILD = NATIVE / "build" / "fuzz"
REGRESSIONS = ROOT / "tests" / "regressions"
MODES = (0x00, 0x01, 0x0A, 0x35)


def build(cc: str) -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    exe = BUILD / "fuzz_decode"
    cmd = [cc, "-g", "-O1", "-std=c11", "-pthread", "-ffp-contract=off",
           "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined",
           "-o", str(exe), str(HERE / "fuzz_decode.c")] + \
        [str(p) for p in sorted((NATIVE / "src").glob("*.c"))]
    subprocess.run(cmd, check=True)
    return exe


def corpus() -> Path:
    d = BUILD / "corpus"
    d.mkdir(parents=True, exist_ok=True)
    for p in sorted((ROOT / "conformance" / "streams").glob("*.tkb")):
        data = p.read_bytes()
        for m in MODES:
            q = d / f"{p.stem}_{m:02x}"
            if not q.exists():
                q.write_bytes(bytes([m]) + data)
    return d


def keep_crashes(art: Path, log: str) -> list:
    kept = []
    for p in sorted(art.glob("*")):
        data = p.read_bytes()
        if not data:
            continue
        h = hashlib.sha256(data).hexdigest()[:16]
        REGRESSIONS.mkdir(exist_ok=True)
        out = REGRESSIONS / f"native-{h}.tkb"
        out.write_bytes(data[1:])
        out.with_suffix(".txt").write_text(
            f"libFuzzer ({p.name}), mode byte 0x{data[0]:02x}\n{log[-4000:]}\n")
        kept.append(out)
    return kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--require-clang", action="store_true")
    a = ap.parse_args(argv)
    cc = shutil.which("clang")
    if cc is None:
        print("fuzz-native: clang is not installed (apt-get install clang); skipped")
        return 1 if a.require_clang else 0
    exe = build(cc)
    seeds = corpus()
    work = BUILD / "work"
    work.mkdir(exist_ok=True)
    art = BUILD / "artifacts"
    shutil.rmtree(art, ignore_errors=True)
    art.mkdir()
    t0 = time.time()
    cmd = [str(exe), str(work), str(seeds), f"-max_total_time={a.seconds}",
           "-rss_limit_mb=2048", "-max_len=70000", "-timeout=20", "-print_final_stats=1",
           f"-artifact_prefix={art}/"]
    if a.jobs > 1:
        cmd += [f"-jobs={a.jobs}", f"-workers={a.jobs}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=BUILD)
    log = r.stderr
    stats = [ln for ln in log.splitlines() if ln.startswith("stat::number_of_executed_units")
             or "DONE" in ln]
    kept = keep_crashes(art, log)
    print(f"fuzz-native: {time.time() - t0:.0f} s, exit {r.returncode}; "
          + "; ".join(stats[-2:]))
    for p in kept:
        print(f"fuzz-native: crashing input kept as {p}")
    if kept or r.returncode != 0:
        print(log[-3000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
