"""Mutation fuzzing of the decoder: every input either decodes or raises a
TKBError, in bounded time.  Used by tests/test_fuzz.py (a few thousand cases)
and by ``python tests/fuzzing.py --n 100000`` (the full run of issue 2).
Inputs that break the decoder are written to tests/regressions/."""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import tokenbits as tb  # noqa: E402
from tokenbits import encoder  # noqa: E402

from streamtools import split  # noqa: E402

REGRESSIONS = Path(__file__).parent / "regressions"
SLOW_S = 2.0


# the transform that the corpus's version 1.1 streams use (inline or by reference); it is
# supplied to every decoding entry point
TRANSFORM = tb.transform.make_transform(np.arange(6) * 1000 - 2500,
                                        (np.arange(24).reshape(4, 6) * 37) % 201 - 100, 12, 7)


def corpus() -> list[bytes]:
    """Small valid streams covering the tools of version 1.1."""
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((2, 17, 6)).astype(np.float32)
    x[:, 1:] += x[:, :-1]
    ids = rng.integers(0, 3000, (2, 12))
    return [
        tb.encode(x.astype(np.float16), qp=-10, grid=(4, 4), prefix_tokens=1, num_lanes=3,
                  lane_steps=5),
        tb.encode(x, qp=-14, keep=0.5, grid=(4, 4), prefix_tokens=1, predictor="up"),
        tb.encode(x, qp=-14, keep=0.6, predictor="left", per_channel_steps=True,
                  output_dtype="bfloat16", meta={"model.name": "fuzz"}),
        tb.encode(x.astype(np.float16), lossless=True, num_lanes=2, lane_steps=7),
        tb.encode(x, lossless=True),
        tb.encode(ids, vocab_size=3000),
        tb.encode_tracks([(x[:, :5], dict(qp=-30, predictor="none")), (ids, {})],
                         meta={"k": "v"}),
        tb.encode(x, qp=-12, grid=(4, 4), prefix_tokens=1, predictor="up", transform=TRANSFORM,
                  embed_transform=True, backend="reference"),
        tb.encode(x, qp=-12, keep=0.7, transform=TRANSFORM, output_dtype="bfloat16",
                  backend="reference"),
        # version 1.1 merge maps (clause 7.8): a grid with a prefix token, and no grid
        tb.encode(x.astype(np.float16), qp=-10, keep=0.4, grid=(4, 4), prefix_tokens=1,
                  merge_map=True, backend="reference"),
        tb.encode(x, qp=-12, keep=0.3, predictor="left", merge_map=True, backend="reference"),
    ]


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    d = bytearray(data)
    kind = int(rng.integers(0, 7))
    if kind == 0:                                   # flip bits
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(d)))
            d[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:                                 # overwrite bytes
        for _ in range(int(rng.integers(1, 5))):
            d[int(rng.integers(0, len(d)))] = int(rng.integers(0, 256))
    elif kind == 2:                                 # truncate
        d = d[:int(rng.integers(0, len(d)))]
    elif kind == 3:                                 # insert / delete a run
        i = int(rng.integers(0, len(d)))
        if rng.random() < 0.5:
            d[i:i] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        else:
            del d[i:i + int(rng.integers(1, 9))]
    else:                                           # mutate a payload, then repair its CRC
        head, units = split(data)
        if not units:
            return bytes(d)
        u = units[int(rng.integers(0, len(units)))]
        p = bytearray(u[3])
        if kind == 6 and len(units) > 1:            # reorder / duplicate / drop units
            j = int(rng.integers(0, len(units)))
            op = int(rng.integers(0, 3))
            if op == 0:
                units.insert(j, list(u))
            elif op == 1:
                units.pop(j)
            else:
                units[0], units[j] = units[j], units[0]
            return head + b"".join(encoder.unit(t, tr, pl, e) for t, tr, e, pl in units)
        if p:
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(0, len(p)))
                if rng.random() < 0.5:
                    p[i] ^= 1 << int(rng.integers(0, 8))
                else:
                    p[i] = int(rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
            if rng.random() < 0.2:
                p = p[:int(rng.integers(0, len(p)))]
        u[3] = bytes(p)
        if rng.random() < 0.1:
            u[1] = int(rng.integers(0, 256))
        return head + b"".join(encoder.unit(t, tr, pl, e) for t, tr, e, pl in units)
    return bytes(d)


def check(data: bytes) -> str | None:
    """None when every decoding entry point behaves (decodes, or raises a TKBError fast)."""
    ts = [TRANSFORM]
    entry_points = (
        ("decode", lambda: tb.canonical_sha256(tb.decode(data, transforms=ts))),
        ("decode non-strict", lambda: tb.canonical_sha256(tb.decode(data, strict=False,
                                                                    transforms=ts))),
        ("iter_frames non-strict", lambda: list(tb.iter_frames(io.BytesIO(data), strict=False,
                                                               transforms=ts))),
        ("read_frame", lambda: tb.read_frame(data, 0, 1, transforms=ts)),
    )
    for name, fn in entry_points:
        t0 = time.perf_counter()
        try:
            fn()
        except tb.TKBError:
            pass
        except Exception as e:  # noqa: BLE001 - that is what we are hunting
            return f"{name}: {type(e).__name__}: {e}"
        if time.perf_counter() - t0 > SLOW_S:
            return f"{name}: slow: {time.perf_counter() - t0:.1f} s"
    return None


def save(data: bytes, why: str) -> Path:
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"{hashlib.sha256(data).hexdigest()[:16]}.tkb"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(why + "\n")
    return path


def run(n: int, seed: int = 0, progress: bool = False) -> list[tuple[Path, str]]:
    rng = np.random.default_rng(seed)
    seeds = corpus()
    failures = []
    t0 = time.perf_counter()
    for i in range(n):
        data = mutate(rng, seeds[i % len(seeds)])
        why = check(data)
        if why:
            failures.append((save(data, why), why))
        if progress and (i + 1) % 5000 == 0:
            print(f"{i + 1}/{n} mutations, {len(failures)} failures, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    return failures


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t = time.perf_counter()
    fails = run(a.n, a.seed, progress=True)
    print(f"{a.n} mutations (seed {a.seed}) in {time.perf_counter() - t:.0f} s: "
          f"{len(fails)} failures")
    for p, why in fails[:20]:
        print(p, why)
    sys.exit(1 if fails else 0)
