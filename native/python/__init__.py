"""tokenbits.native: the Python binding of libtkb, the C decoder of ``native/`` (ctypes).

libtkb is a second, independent implementation of the TKB decoding process, written in
C11 from the spec (``native/include/tkb.h``).  The package's set-up compiles it with the
machine's C compiler (``native/build.py``, run by ``setup.py``); without a compiler the
package installs without it and :func:`available` says why.

The codec modules never import this module: ``tokenbits.decode(..., backend="native")``,
``read_frame`` and ``iter_frames`` reach it through the dispatch layer
(``tokenbits.kernels.dispatch``).  It returns the reference's own objects
(:class:`tokenbits.decoder.DecodedStream`, :class:`tokenbits.decoder.Frame`), with the
same values bit for bit and the same errors (class, clause; element and offset are
informative, clause 9.0).
"""
from __future__ import annotations

import ctypes as C
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LIB_ENV = "TKB_NATIVE_LIB"          # a libtkb.so to use instead of the package's

# tkb_class (tkb.h) -> the reference's error classes (clause 9)
_CLASS_NAMES = {1: "TKBFormatError", 2: "TKBTruncatedError", 3: "TKBCRCError",
                4: "TKBUnsupportedError", 5: "TKBLevelError", 6: "TKBReferenceError",
                7: "TKBTableError", 8: "TKBEntropyError", 9: "TKBValueError"}
_NOMEM, _USAGE = 32, 33
EV_NEED_DATA, EV_UNIT, EV_FRAME, EV_ERROR, EV_END = 0, 1, 2, 3, 4
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("<u2"), 3: np.dtype("<u4")}
DTYPE_NAMES = {0: "float32", 1: "float16", 2: "bfloat16", 3: "uint32"}


class Error(C.Structure):
    _fields_ = [("cls", C.c_int), ("clause", C.c_char * 12), ("element", C.c_char * 40),
                ("offset", C.c_int64), ("fatal", C.c_int), ("message", C.c_char * 200)]


class Options(C.Structure):
    _fields_ = [("strict", C.c_int), ("threads", C.c_int), ("simd", C.c_int)]


class FrameInfo(C.Structure):
    _fields_ = [("track_id", C.c_uint32), ("tps_id", C.c_uint32), ("frame_number", C.c_uint32),
                ("num_tokens", C.c_uint32), ("num_kept", C.c_uint32),
                ("num_channels", C.c_uint32), ("dtype", C.c_int), ("has_merge_map", C.c_int),
                ("offset", C.c_uint64), ("value_size", C.c_size_t),
                ("values_bytes", C.c_size_t), ("dense_bytes", C.c_size_t)]


class StreamInfo(C.Structure):
    _fields_ = [("version_major", C.c_int), ("version_minor", C.c_int),
                ("profile_idc", C.c_int), ("level_idc", C.c_int)]


class Event(C.Structure):
    _fields_ = [("kind", C.c_int), ("unit_type", C.c_int), ("track_id", C.c_int),
                ("offset", C.c_uint64), ("frame", FrameInfo), ("frame_handle", C.c_void_p),
                ("error", Error), ("payload", C.POINTER(C.c_uint8)),
                ("payload_len", C.c_size_t)]


_lib = None
_why = None


def library_path() -> Path | None:
    """The libtkb.so this binding loads (None when there is none)."""
    env = os.environ.get(LIB_ENV)
    if env:
        return Path(env)
    p = HERE / "libtkb.so"
    return p if p.is_file() else None


def tkbdec_path() -> str | None:
    """The ``tkbdec`` command built with the library (None when there is none)."""
    p = HERE / "tkbdec"
    return str(p) if p.is_file() and os.access(p, os.X_OK) else None


def _load():
    global _lib, _why
    if _lib is not None or _why is not None:
        return _lib
    path = library_path()
    if path is None:
        _why = ("libtkb is not built (no C compiler when the package was installed; "
                "reinstall with cc/gcc/clang, or run native/build.py)")
        return None
    try:
        lib = C.CDLL(str(path))
    except OSError as e:
        _why = f"cannot load {path}: {e}"
        return None
    P, vp = C.POINTER, C.c_void_p
    sig = {
        "tkb_version": (C.c_char_p, []), "tkb_simd_name": (C.c_char_p, []),
        "tkb_decoder_new": (vp, [P(Options)]), "tkb_decoder_free": (None, [vp]),
        "tkb_add_transform_data": (C.c_int, [vp, C.c_char_p, C.c_size_t, P(Error)]),
        "tkb_add_transform_tkbt": (C.c_int, [vp, C.c_char_p, C.c_size_t, P(Error)]),
        "tkb_feed": (C.c_int, [vp, C.c_char_p, C.c_size_t]), "tkb_feed_end": (None, [vp]),
        "tkb_set_input": (C.c_int, [vp, vp, C.c_size_t]),
        "tkb_next": (C.c_int, [vp, P(Event)]), "tkb_stream": (P(StreamInfo), [vp]),
        "tkb_units_done": (C.c_int, [vp]),
        "tkb_frame_decode": (C.c_int, [vp, vp, vp, vp, vp, P(Error)]),
        "tkb_frames_decode": (C.c_int, [vp, C.c_int, P(vp), P(vp), P(vp), P(vp),
                                        P(C.c_int), P(Error)]),
        "tkb_frame_free": (None, [vp]),
    }
    missing = _bind(lib, sig)
    if missing:
        _why = f"{path} is not a matching libtkb: {missing}"
        return None
    _lib = lib
    return lib


def _bind(lib, sig: dict) -> str | None:
    """Set restype and argtypes of each function of ``sig`` (name -> (restype, argtypes));
    the error text when libtkb lacks one of them, else None."""
    try:
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
    except AttributeError as e:
        return str(e)
    return None


def available() -> str | None:
    """None when the native backend can run here, else why not."""
    _load()
    return _why


def version() -> str:
    lib = _load()
    return lib.tkb_version().decode() if lib else "-"


def simd() -> str:
    """The fast path libtkb chose on this CPU: "avx2" or "scalar"."""
    lib = _load()
    return lib.tkb_simd_name().decode() if lib else "-"


def _raise_unavailable():
    from tokenbits.errors import TKBBackendError
    raise TKBBackendError(f"the native backend cannot run: {available()}")


def _error(e: Error):
    """The reference's exception for a libtkb error (class, clause, element, offset)."""
    import tokenbits.errors as errors
    name = _CLASS_NAMES.get(e.cls)
    if name is None:
        if e.cls == _NOMEM:
            return MemoryError(e.message.decode("utf-8", "replace"))
        return RuntimeError(f"libtkb: {e.message.decode('utf-8', 'replace')}")
    cls = getattr(errors, name)
    return cls(e.message.decode("utf-8", "replace"), clause=e.clause.decode() or None,
               element=e.element.decode() or None, offset=e.offset if e.offset >= 0 else None)


class _Decoder:
    """One libtkb decoder: options, transforms, input."""

    def __init__(self, strict: bool, transforms, threads: int | None):
        lib = _load()
        if lib is None:
            _raise_unavailable()
        self.lib = lib
        self.strict = strict
        n = threads if threads is not None else int(os.environ.get("TKB_THREADS", "1") or 1)
        self.threads = max(1, n)
        self.h = lib.tkb_decoder_new(C.byref(Options(1 if strict else 0, self.threads, 0)))
        if not self.h:
            raise MemoryError("libtkb: out of memory")
        self._keep = None
        for t in transforms or ():
            self.add_transform(t)

    def add_transform(self, t) -> None:
        """A Transform object, the bytes of a .tkbt file or a path to one (clause 6.7)."""
        err = Error()
        if hasattr(t, "data") and hasattr(t, "num_coeffs"):       # a Transform
            data = bytes(t.data)
            rc = self.lib.tkb_add_transform_data(self.h, data, len(data), C.byref(err))
        else:
            data = bytes(t) if isinstance(t, (bytes, bytearray, memoryview)) else \
                Path(os.fspath(t)).read_bytes()
            rc = self.lib.tkb_add_transform_tkbt(self.h, data, len(data), C.byref(err))
        if rc:
            raise _error(err)

    def set_input(self, data) -> None:
        buf = data if isinstance(data, bytes) else bytes(data)
        self._keep = buf                      # borrowed by libtkb: keep it alive
        self.lib.tkb_set_input(self.h, C.c_char_p(buf), len(buf))

    def close(self) -> None:
        if self.h:
            self.lib.tkb_decoder_free(self.h)
            self.h = None

    def __del__(self):
        self.close()

    def header(self):
        from tokenbits.decoder import StreamHeader
        s = self.lib.tkb_stream(self.h)
        if not s:
            return None
        s = s.contents
        return StreamHeader(s.version_major, s.version_minor, s.profile_idc, s.level_idc)

    def events(self, feed=None):
        """Yield ("frame", Frame) / ("error", exception, fatal) / ("unit", type, track,
        payload) in stream order, frames decoded ``threads`` at a time.  ``feed()``:
        returns more bytes (b"" at the end) when the decoder needs them."""
        lib, h = self.lib, self.h
        batch = 1 if self.threads <= 1 else 4 * self.threads
        queue = []        # ("frame", handle, info) or ("error", exc, fatal)
        ev = Event()
        ending = False
        while True:
            if queue and (ending or len(queue) >= batch or lib.tkb_units_done(h)):
                yield from self._flush(queue)
                queue = []
            if ending:
                return
            k = lib.tkb_next(h, C.byref(ev))
            if k == EV_NEED_DATA:
                more = feed() if feed is not None else b""
                if more:
                    lib.tkb_feed(h, more, len(more))
                else:
                    lib.tkb_feed_end(h)
                continue
            if k == EV_END:
                ending = True
                continue
            if k == EV_UNIT:
                payload = C.string_at(ev.payload, ev.payload_len) if ev.unit_type in (1, 3, 4, 5) \
                    else b""
                if queue:
                    queue.append(("unit", ev.unit_type, ev.track_id, payload))
                else:
                    yield ("unit", ev.unit_type, ev.track_id, payload)
                continue
            if k == EV_ERROR:
                queue.append(("error", _error(ev.error), bool(ev.error.fatal)))
                if ev.error.fatal or self.strict:
                    ending = True
                continue
            fi = ev.frame
            info = {f: getattr(fi, f) for f, _ in FrameInfo._fields_}
            queue.append(("frame", ev.frame_handle, info))

    def _flush(self, queue):
        lib, h = self.lib, self.h
        frames = [q for q in queue if q[0] == "frame"]
        outs = []
        n = len(frames)
        if n:
            handles = (C.c_void_p * n)(*[q[1] for q in frames])
            vals, poss, sins = (C.c_void_p * n)(), (C.c_void_p * n)(), (C.c_void_p * n)()
            for i, (_, _, info) in enumerate(frames):
                nk, d = info["num_kept"], info["num_channels"]
                dt = DTYPES[info["dtype"]]
                v = np.empty((nk,) if info["dtype"] == 3 else (nk, d), dtype=dt)
                p = np.empty(nk, dtype=np.uint32)
                s = (np.empty(info["num_tokens"] - nk, dtype=np.uint32)
                     if info["has_merge_map"] else None)
                vals[i] = v.ctypes.data
                poss[i] = p.ctypes.data
                sins[i] = s.ctypes.data if s is not None else None
                outs.append((v, p, s))
            errs = (Error * n)()
            lib.tkb_frames_decode(h, n, handles, vals, poss, sins, None, errs)
        i = 0
        stop = False
        for q in queue:
            if q[0] == "frame":
                _, handle, info = q
                v, p, s = outs[i]
                e = errs[i]
                i += 1
                lib.tkb_frame_free(handle)
                if stop:
                    continue
                if e.cls:
                    yield ("error", _error(e), False)
                    if self.strict:
                        stop = True
                    continue
                from tokenbits.decoder import Frame
                yield ("frame", Frame(info["track_id"], info["frame_number"], info["num_tokens"],
                                      p, v, DTYPE_NAMES[info["dtype"]], info["tps_id"],
                                      info["offset"], s))
            elif not stop:
                yield q
                if q[0] == "error" and (q[2] or self.strict):
                    stop = True


def _tps_summary(payload: bytes) -> dict:
    """The leading elements of an accepted parameter set (clause 5.6)."""
    return dict(tps_id=payload[0], track_kind=payload[1], coding_mode=payload[2],
                source_dtype=payload[3], output_dtype=payload[4],
                num_channels=int.from_bytes(payload[5:9], "little"), payload=payload)


def _tps_dict(payload: bytes, header, stream, transforms) -> dict:
    """An accepted parameter set as the reference's dict (parsed by the reference: libtkb
    has accepted it), for tools that read ``stream.tracks``."""
    from tokenbits import decoder as ref
    try:
        return ref.parse_tps(payload, ref.levels.get_level(header.level_idc),
                             header.profile_idc, transforms=stream.transforms)
    except Exception:      # e.g. a transform the reference could not load
        return _tps_summary(payload)


def _add_transform(payload: bytes, header, stream, supplied: dict) -> None:
    """An accepted transform unit in ``stream.transforms`` (parsed by the reference)."""
    from tokenbits import decoder as ref
    from tokenbits import transform as tr
    try:
        if "digests" not in supplied:
            supplied["digests"] = tr.supplied_transforms(supplied["given"])
        tid, t = tr.parse_transform_unit(payload, ref.levels.get_level(header.level_idc),
                                         supplied["digests"])
        stream.transforms.setdefault(tid, t)
    except Exception:
        pass


def decode(data, strict: bool = True, progress=None, transforms=None, dense: bool = False,
           threads: int | None = None):
    """Decode a stream held in memory with libtkb: a DecodedStream like the reference's
    (frames, errors, framing_error, metadata, index, parameter-set summaries).
    ``strict``: raise the first error; else skip damaged units (clause 9.10).
    ``threads``: frames decoded in parallel (default $TKB_THREADS or 1)."""
    from tokenbits import decoder as ref
    dec = _Decoder(strict, transforms, threads)
    supplied = {"given": transforms}
    try:
        dec.set_input(data)
        stream = None
        for item in dec.events():
            if stream is None:
                header = dec.header()
                if header is None:              # stream header errors: raised (clause 6.1)
                    raise item[1]
                stream = ref.DecodedStream(header)
            kind = item[0]
            if kind == "frame":
                f = item[1]
                stream.frames.append(ref.densify(f) if dense else f)
            elif kind == "error":
                if strict:
                    raise item[1]
                stream.errors.append(item[1])
                if item[2]:
                    stream.framing_error = item[1]
            else:
                _, utype, track, payload = item
                if utype == 1 and payload[0] not in stream.tracks.get(track, {}):
                    stream.tracks.setdefault(track, {})[payload[0]] = _tps_dict(
                        payload, header, stream, transforms)
                elif utype == 3:
                    stream.metadata.setdefault(track, {}).update(ref.parse_metadata(payload))
                elif utype == 4:
                    stream.index.setdefault(track, []).extend(ref.parse_index(payload))
                elif utype == 5:
                    _add_transform(payload, header, stream, supplied)
            if progress:
                progress(0)
        if stream is None:
            header = dec.header()
            if header is None:
                raise RuntimeError("libtkb ended without a stream header")
            stream = ref.DecodedStream(header)
        return stream
    finally:
        dec.close()


def iter_frames(f, strict: bool = True, errors: list | None = None, transforms=None,
                dense: bool = False, threads: int | None = None, chunk: int = 1 << 16):
    """Streaming decode from a binary file object with libtkb: frames as their units
    arrive (tkb_feed).  Non-strict: errors go to ``errors``; a framing error ends it."""
    from tokenbits import decoder as ref
    dec = _Decoder(strict, transforms, threads)
    try:
        for item in dec.events(feed=lambda: f.read(chunk)):
            if item[0] == "frame":
                yield ref.densify(item[1]) if dense else item[1]
            elif item[0] == "error":
                if strict or dec.header() is None:
                    raise item[1]
                if errors is not None:
                    errors.append(item[1])
    finally:
        dec.close()


def read_frame(data, track_id: int, frame_number: int, strict: bool = True, transforms=None,
               dense: bool = False):
    """Random access (clause 6.6): the track's parameter sets, the transforms and the index
    units are processed, then the frame unit the index names is decoded with libtkb."""
    from tokenbits import decoder as ref
    from tokenbits.errors import TKBFormatError, TKBReferenceError
    header = ref.parse_stream_header(data)
    level = ref.levels.get_level(header.level_idc)
    keep = bytearray(data[:ref.STREAM_HEADER_SIZE])
    index = []
    target = None
    for u in ref.iter_units(data, level):
        if (u.unit_type in (ref.UNIT_TPS, ref.UNIT_INDEX) and u.track_id == track_id
                or u.unit_type == ref.UNIT_TRANSFORM):
            keep += bytes(memoryview(data)[u.offset:u.offset + u.size])
            if u.unit_type == ref.UNIT_INDEX and u.crc_ok:
                try:
                    index += ref.parse_index(u.payload)
                except Exception:
                    pass
    for number, off in index:
        if number == frame_number:
            target = off
    if target is None:
        raise TKBReferenceError(f"no index entry for frame {frame_number} of track {track_id}",
                                clause="6.6", element="index_entry")
    u = ref.read_unit(data, target, level)
    if u.unit_type != ref.UNIT_FRAME or u.track_id != track_id:
        raise TKBFormatError("index entry does not point at a frame unit of its track",
                             clause="6.6", element="unit_offset", offset=target)
    keep += bytes(memoryview(data)[u.offset:u.offset + u.size])
    s = decode(bytes(keep), strict=False, transforms=transforms)
    errs = [e for e in s.errors if getattr(e, "clause", "") != "6.6"]
    if strict and errs:
        raise errs[0]
    if not s.frames or s.frames[-1].frame_number != frame_number:
        raise TKBFormatError("index entry does not point at the frame", clause="6.6",
                             element="unit_offset", offset=target)
    f = s.frames[-1]
    import dataclasses
    f = dataclasses.replace(f, offset=target)
    return ref.densify(f) if dense else f
