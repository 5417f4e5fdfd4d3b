"""Backend choice: the Triton kernels when a GPU is there, the reference otherwise.

``backend``: "auto" (the GPU path when torch, triton and a CUDA device are
present), "gpu" (insist; also runs in Triton's interpreter when
TRITON_INTERPRET=1, on device "cpu"), "reference" (numpy).  The environment
variable TKB_BACKEND sets the default.  Both paths write byte-identical
streams and decode bit-identical values; this module imports torch only when
the GPU path is taken.
"""
from __future__ import annotations

import glob
import os

from tokenbits.errors import TKBBackendError

from . import available

BACKENDS = ("auto", "gpu", "reference")


def choose(backend: str | None = None) -> str:
    """The backend to use: "gpu" or "reference"."""
    b = backend or os.environ.get("TKB_BACKEND") or "auto"
    if b not in BACKENDS:
        raise TKBBackendError(f"unknown backend {b!r}: auto, gpu or reference")
    if b == "reference":
        return b
    if b == "auto" and not glob.glob("/dev/nvidia[0-9]*"):
        return "reference"          # no GPU: do not pay for importing torch
    why = available()
    if why is None and b == "auto":
        import torch
        if not torch.cuda.is_available():     # interpreter mode is for tests, not speed
            return "reference"
    if why is not None:
        if b == "gpu":
            raise TKBBackendError(f"the GPU backend cannot run: {why}")
        return "reference"
    return "gpu"


def encode_tracks(tracks, backend=None, device=None, **kwargs) -> bytes:
    from tokenbits.encoder import encode_tracks as ref
    if choose(backend) == "reference":
        return ref(tracks, **kwargs)
    from . import codec
    dev = device or codec.default_device()
    sources = iter([arr for arr, _ in tracks])    # frame_coder is called track by track

    def frame_coder(te, frames):
        return codec.encode_frames(te, frames, dev, source=next(sources))
    return ref(tracks, frame_coder=frame_coder, **kwargs)


def decode(data, strict: bool = True, progress=None, backend=None, device=None,
           transforms=None):
    """A DecodedStream with numpy values, identical whichever backend decodes."""
    from tokenbits.decoder import decode as ref
    if choose(backend) == "reference":
        return ref(data, strict, progress, transforms=transforms)
    from . import codec
    return codec.to_numpy(codec.decode(data, strict, device or codec.default_device(),
                                       progress=progress, transforms=transforms))


def decode_tensors(data, strict: bool = True, device=None, dense: bool = False, backend=None,
                   transforms=None):
    """A DecodedStream whose frame values are torch tensors on ``device``: float32,
    float16, bfloat16, or int32 (ids).  ``dense``: [num_tokens, D] per frame, the
    kept tokens at their positions and each pruned position a bit copy of its
    stand-in's row (merge map, clause 7.8) or zeros when the frame has no merge map."""
    import numpy as np
    import torch
    from . import codec
    dev = device or codec.default_device()
    if choose(backend) == "gpu":
        return codec.decode(data, strict, dev, dense, transforms=transforms)
    import dataclasses
    from tokenbits.decoder import decode as ref
    s = ref(data, strict, transforms=transforms)
    frames = []
    for f in s.frames:
        v = f.dense_values() if dense else f.values      # clause 7.8 on the host
        if f.dtype == "bfloat16":
            t = torch.from_numpy(v.view(np.int16)).view(torch.bfloat16)
        elif f.dtype == "uint32":
            t = torch.from_numpy(v.view(np.int32))
        else:
            t = torch.from_numpy(v)
        frames.append(dataclasses.replace(f, values=t.to(dev)))
    return dataclasses.replace(s, frames=frames)
