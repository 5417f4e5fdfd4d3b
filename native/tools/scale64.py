"""The 2-core scaling of libtkb's decoder (issue 17): the bench's 64-frame stream (the
576 x 1024 ViT frame with its rows rotated by 9 i tokens for frame i, qp -6) decoded by
``tkbdec --bench 5`` with 1 and with 2 threads, five times; prints ms per frame for each
and the ratio of the best whole-stream times.  The same measurement as the 64-frame rows
of ``tkb bench``'s native section, repeated.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python -P native/tools/scale64.py [RUNS]
"""
import sys

import numpy as np

from tokenbits import bench, native
from tokenbits.encoder import encode


def main(runs: int = 5) -> None:
    exe = native.tkbdec_path()
    if exe is None:
        sys.exit(f"tkbdec is not built: {native.available()}")
    x = bench.large_frame()
    data64 = encode(np.stack([np.roll(x, 9 * i, axis=0) for i in range(64)]), qp=-6)
    for _ in range(runs):
        m1 = bench._tkbdec_bench(exe, data64, 5, "--threads", "1")
        m2 = bench._tkbdec_bench(exe, data64, 5, "--threads", "2")
        print(f"1 thread {m1['ms_per_frame']:.3f} ms/frame, 2 threads {m2['ms_per_frame']:.3f}"
              f" ms/frame: {m1['best_ms'] / m2['best_ms']:.2f}x", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
