"""TokenBits: the reference implementation of TKB, the token bitstream format.

Public API (mirrors the ``tkb`` command line):

* :func:`encode` (array or tensor -> bytes), :func:`encode_tracks`, :func:`encode_file`,
  :class:`StreamWriter` (streaming encode to a file object)
* :func:`decode` (bytes -> :class:`DecodedStream`), :func:`decode_file`,
  :func:`decode_tensors` (bytes -> torch tensors on a GPU),
  :func:`iter_frames` (streaming), :func:`read_frame` (random access by index)
* :func:`to_array` (decoded frames of a track -> one array, as encoded)
* :func:`fit_transform` (a channel transform from calibration tokens, clause 6.7),
  :func:`load_transform` / :func:`save_transform` (``.tkbt`` files)
* :class:`TKBError` and its subclasses for every decoding failure.

The normative text is ``spec/``; module docstrings name the clauses they implement.
The codec modules never import the GPU kernels (``tokenbits.kernels``) nor libtkb
(``tokenbits.native``, the C decoder and encoder core); the functions above reach them
through ``tokenbits.kernels.dispatch`` when asked (``backend=``) or when they can run
("auto": the GPU, else native, else the reference).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .canonical import canonical_bytes, canonical_sha256
from . import decoder as _decoder
from . import encoder as _encoder
from .decoder import DecodedStream, Frame
from .encoder import StreamWriter, TrackOptions
from .transform import Transform
from .transform_fit import fit_transform
from .tkbt import load as load_transform, save as save_transform
from .errors import (TKBCRCError, TKBEncodeError, TKBEntropyError, TKBError, TKBFormatError,
                     TKBLevelError, TKBReferenceError, TKBTableError, TKBTruncatedError,
                     TKBUnsupportedError, TKBValueError)

__version__ = "1.1.0"

__all__ = [
    "encode", "encode_tracks", "encode_file", "decode", "decode_file", "decode_tensors",
    "iter_frames", "fit_transform", "load_transform", "save_transform", "Transform",
    "read_frame", "to_array", "StreamWriter", "canonical_bytes", "canonical_sha256", "DecodedStream", "Frame",
    "TrackOptions", "TKBError", "TKBFormatError", "TKBTruncatedError", "TKBCRCError",
    "TKBUnsupportedError", "TKBLevelError", "TKBReferenceError", "TKBTableError",
    "TKBEntropyError", "TKBValueError", "TKBEncodeError",
]


def encode(array, *, meta: dict | None = None, level_idc: int | None = None,
           index: bool = True, progress=None, backend: str | None = None, device=None,
           **options) -> bytes:
    """Encode one track (see :class:`TrackOptions` for ``options``).  ``backend``:
    "auto" (the GPU kernels when a CUDA device is present, else libtkb when it is built,
    else the reference), "gpu", "native" (the reference's rate control, libtkb's C core
    coding the frames) or "reference"; every backend writes the same bytes."""
    return encode_tracks([(array, TrackOptions(**options))], meta=meta, level_idc=level_idc,
                         index=index, progress=progress, backend=backend, device=device)


def encode_tracks(tracks: list, meta: dict | None = None, level_idc: int | None = None,
                  index: bool = True, progress=None, backend: str | None = None,
                  device=None) -> bytes:
    """Encode several tracks, each (array, TrackOptions or dict), into one stream."""
    kw = dict(meta=meta, level_idc=level_idc, index=index, progress=progress)
    if backend == "reference":
        return _encoder.encode_tracks(tracks, **kw)
    from .kernels import dispatch   # the GPU path, when there is one (kernels/)
    return dispatch.encode_tracks(tracks, backend=backend, device=device, **kw)


def decode(data, strict: bool = True, progress=None, backend: str | None = None,
           device=None, transforms=None, dense: bool = False,
           threads: int | None = None) -> DecodedStream:
    """Decode a stream held in memory; values are numpy arrays, identical whichever
    ``backend`` ("auto", "gpu", "native", "reference") decodes them.  ``transforms``: the
    transforms (Transform objects, ``.tkbt`` paths or bytes) that the stream may name
    by digest (clause 6.7).  ``threads``: frames and chunks decoded in parallel (the
    native backend; default $TKB_THREADS or 1).  ``dense``: every frame is clause 7.8's dense frame,
    [num_tokens, D] with each pruned position filled from its stand-in (merge map) or
    with zeros, positions 0 .. num_tokens-1 (its canonical output is clause 10.4's)."""
    if backend == "reference":
        s = _decoder.decode(data, strict, progress, transforms=transforms)
    else:
        from .kernels import dispatch
        s = dispatch.decode(data, strict, progress, backend=backend, device=device,
                            transforms=transforms, threads=threads)
    return _decoder.densify_stream(s) if dense else s


def decode_tensors(data, strict: bool = True, device=None, dense: bool = False,
                   backend: str | None = None, transforms=None) -> DecodedStream:
    """Decode into torch tensors on ``device`` (default: the GPU when there is one),
    through the GPU kernels when they can run.  ``dense``: each frame is
    [num_tokens, D] with the kept tokens at their positions and each pruned position
    filled from its stand-in (merge map, clause 7.8) or with zeros."""
    from .kernels import dispatch
    return dispatch.decode_tensors(data, strict, device, dense, backend, transforms)


def encode_file(array, path, **options) -> int:
    """Encode to a file; returns its size in bytes."""
    data = encode(array, **options)
    Path(path).write_bytes(data)
    return len(data)


def decode_file(path, strict: bool = True, backend: str | None = None,
                transforms=None, dense: bool = False) -> DecodedStream:
    return decode(Path(path).read_bytes(), strict=strict, backend=backend,
                  transforms=transforms, dense=dense)


def to_array(stream: DecodedStream, track_id: int = 0, torch_device=None,
             dense: bool = False):
    """The frames of one track as one array: [N, D] for one frame, [F, N, D] for several
    (ids: [N] or [F, N]).  Pruned tracks cannot be stacked unless ``dense``: then each
    frame is [num_tokens, D] with its pruned positions filled from their stand-ins
    (merge map, clause 7.8) or with zeros.  With ``torch_device`` the result is a
    torch tensor there (bfloat16 included)."""
    frames = stream.track_frames(track_id)
    if not frames:
        raise TKBError(f"no decoded frames in track {track_id}")
    if dense:
        frames = [_decoder.densify(f) for f in frames]
    if any(f.num_kept != f.num_tokens for f in frames):
        raise TKBError("frames are pruned: read values with their positions from .frames, "
                       "or ask for dense=True")
    if len({f.values.shape for f in frames}) != 1:
        raise TKBError("frames differ in size: read them from .frames")
    arr = frames[0].values if len(frames) == 1 else np.stack([f.values for f in frames])
    if torch_device is not None:
        from .io import numpy_to_torch
        return numpy_to_torch(arr, frames[0].dtype, torch_device)
    return arr


def iter_frames(f, strict: bool = True, errors: list | None = None, transforms=None,
                dense: bool = False, backend: str | None = None):
    """Streaming decode from a binary file object: yields frames as their units arrive
    (see :func:`tokenbits.decoder.iter_frames`); ``backend``: "auto", "native",
    "reference"."""
    from .kernels import dispatch
    return dispatch.iter_frames(f, strict, errors, transforms, dense, backend=backend)


def read_frame(data, track_id: int, frame_number: int, strict: bool = True,
               transforms=None, dense: bool = False, backend: str | None = None) -> Frame:
    """Random access: decode one frame using the stream's index unit (clause 6.6),
    the track's parameter sets and the transforms they name.  ``dense``: clause 7.8's
    dense frame.  ``backend``: "auto", "native", "reference"."""
    if backend != "reference":
        from .kernels import dispatch
        frame = dispatch.read_frame(data, track_id, frame_number, strict, transforms, dense,
                                    backend=backend)
        if frame is not None:
            return frame
    from . import decoder as d
    header = d.parse_stream_header(data)
    dec = d.Decoder(header, strict, keep=False, transforms=transforms)
    target = None
    for u in d.iter_units(data, dec.level):
        if (u.unit_type in (d.UNIT_TPS, d.UNIT_INDEX) and u.track_id == track_id
                or u.unit_type == d.UNIT_TRANSFORM):
            dec.add_unit(u)
    for number, off in dec.stream.index.get(track_id, []):
        if number == frame_number:
            target = off
    if target is None:
        raise TKBReferenceError(f"no index entry for frame {frame_number} of track {track_id}",
                                clause="6.6", element="index_entry")
    u = d.read_unit(data, target, dec.level)
    if u.unit_type != d.UNIT_FRAME or u.track_id != track_id:
        raise TKBFormatError("index entry does not point at a frame unit of its track",
                             clause="6.6", element="unit_offset", offset=target)
    frame = dec.add_unit(u)
    if frame is None or frame.frame_number != frame_number:
        raise TKBFormatError("index entry does not point at the frame", clause="6.6",
                             element="unit_offset", offset=target)
    return d.densify(frame) if dense else frame
