"""TokenBits GPU kernels (Triton): the hot paths of TKB encoding and decoding.

Installed as ``tokenbits.kernels``.  Importing this package needs neither torch
nor triton; the kernel modules do.  Every kernel has a twin in the numpy
reference (``tokenbits``) and tests that compare them output for output:

* :mod:`.rans`   - interleaved rANS decode and encode of all chunks of a batch
  of frames (clause 7.3), the encoder's words placed in stream order;
* :mod:`.quant`  - quantization, prediction residuals and symbol mapping
  (Annex B.1, clauses 7.4-7.5 in reverse), token norms, pruning sums (Annex B.2),
  histograms;
* :mod:`.recon`  - escapes, inverse prediction, dequantization and the lossless
  split path (clauses 7.4-7.6);
* :mod:`.codec`  - frames of a stream encoded and decoded through them;
* :mod:`.dispatch` - picks the GPU path or the reference.
"""
from __future__ import annotations


def available() -> str | None:
    """Why the Triton path cannot run here, or None when it can."""
    try:
        import torch
        import triton  # noqa: F401
    except ImportError as e:
        return f"the gpu extra is not installed ({e.name} is missing)"
    import os
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    return None
