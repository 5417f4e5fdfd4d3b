"""Backend choice: the Triton kernels when a GPU is there, the reference otherwise.

``backend``: "auto" (the GPU path when torch, triton and a CUDA device are
present), "gpu" (insist; also runs in Triton's interpreter when
TRITON_INTERPRET=1, on device "cpu"), "reference" (numpy), "native" (libtkb of
``native/``, ``tokenbits.native``: the C decoder, and for encoding the C encoder core
coding the frames of tracks fitted by the reference encoder, ``tokenbits.native.encoder``).
"auto" takes the GPU, else native, else the reference.  The environment
variable TKB_BACKEND sets the default.  Every path writes byte-identical
streams and decodes bit-identical values; this module imports torch only when
the GPU path is taken, and libtkb only when the native path is.
"""
from __future__ import annotations

import glob
import os

from tokenbits.errors import TKBBackendError

from . import available

BACKENDS = ("auto", "gpu", "native", "reference")


def native_unavailable(op: str = "decode") -> str | None:
    """Why libtkb (the native backend) cannot run ``op`` here, or None when it can
    (encoding needs the encoder core, ``tokenbits.native.encoder``)."""
    from tokenbits import native
    why = native.available()
    if why is None and op == "encode":
        from tokenbits.native import encoder
        why = encoder.available()
    return why


def choose(backend: str | None = None, op: str = "encode") -> str:
    """The backend to use for ``op`` ("encode" or "decode"): "gpu", "native" or
    "reference".  Encoding with "native": the reference encoder fits each track (Annex
    B rate control) and libtkb's core codes its frames; it covers every option (a track
    it cannot code falls back to the reference with a warning)."""
    b = backend or os.environ.get("TKB_BACKEND") or "auto"
    if b not in BACKENDS:
        raise TKBBackendError(f"unknown backend {b!r}: auto, gpu, native or reference")
    if b == "reference":
        return b
    if b == "native":
        why = native_unavailable(op)
        if why is not None:
            raise TKBBackendError(f"the native backend cannot run: {why}")
        return b

    def cpu() -> str:          # without the GPU: libtkb when it is built, else numpy
        return "native" if native_unavailable(op) is None else "reference"
    if b == "auto" and not glob.glob("/dev/nvidia[0-9]*"):
        return cpu()           # no GPU: do not pay for importing torch
    why = available()
    if why is None and b == "auto":
        import torch
        if not torch.cuda.is_available():     # interpreter mode is for tests, not speed
            return cpu()
    if why is not None:
        if b == "gpu":
            raise TKBBackendError(f"the GPU backend cannot run: {why}")
        return cpu()
    return "gpu"


def encode_tracks(tracks, backend=None, device=None, **kwargs) -> bytes:
    from tokenbits.encoder import encode_tracks as ref
    which = choose(backend, "encode")
    if which == "reference":
        return ref(tracks, **kwargs)
    if which == "native":      # libtkb's encoder core codes the frames (same bytes)
        from tokenbits.native import encoder as native_encoder
        return ref(tracks, frame_coder=native_encoder.encode_frames,
                   kernels=native_encoder.fit_kernels(), **kwargs)
    from . import codec
    dev = device or codec.default_device()
    sources = iter([arr for arr, _ in tracks])    # frame_coder is called track by track

    def frame_coder(te, frames):      # the kept positions that the fit selected on the GPU
        return codec.encode_frames(te, frames, dev, source=next(sources),
                                   positions=te.positions)
    return ref(tracks, frame_coder=frame_coder, kernels=codec.GpuFitKernels(dev), **kwargs)


def decode(data, strict: bool = True, progress=None, backend=None, device=None,
           transforms=None, threads=None):
    """A DecodedStream with numpy values, identical whichever backend decodes."""
    from tokenbits.decoder import decode as ref
    which = choose(backend, "decode")
    if which == "reference":
        return ref(data, strict, progress, transforms=transforms)
    if which == "native":
        from tokenbits import native
        return native.decode(data, strict, progress, transforms=transforms, threads=threads)
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
    if choose(backend, "decode") == "gpu":
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


def iter_frames(f, strict: bool = True, errors=None, transforms=None, dense: bool = False,
                backend=None):
    """Streaming decode (frames as their units arrive): libtkb or the reference."""
    if choose(backend, "decode") == "native":
        from tokenbits import native
        return native.iter_frames(f, strict, errors, transforms, dense)
    from tokenbits.decoder import iter_frames as ref
    return ref(f, strict, errors, transforms, dense)


def read_frame(data, track_id: int, frame_number: int, strict: bool = True, transforms=None,
               dense: bool = False, backend=None):
    """Random access to one frame (clause 6.6): libtkb or the reference."""
    if choose(backend, "decode") == "native":
        from tokenbits import native
        return native.read_frame(data, track_id, frame_number, strict, transforms, dense)
    return None     # the caller runs the reference


def backends() -> dict:
    """Each backend and why it cannot run here (None: it can)."""
    try:
        gpu = available()
        if gpu is None and not os.environ.get("TRITON_INTERPRET") == "1":
            import torch
            gpu = None if torch.cuda.is_available() else "no CUDA device"
    except Exception as e:   # a broken torch / triton install
        gpu = f"{type(e).__name__}: {e}"
    return {"reference": None, "native": native_unavailable(), "gpu": gpu}
