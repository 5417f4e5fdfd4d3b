"""The ``tkb`` command line (informative).

Subcommands::

    tkb encode IN -o OUT.tkb [options]   .npy / .safetensors / .pt -> TKB stream
    tkb decode IN.tkb -o OUT             TKB stream -> .npy / .safetensors
    tkb inspect IN.tkb [--json]          header, tracks, frames, metadata, index, units
    tkb trace IN.tkb [--limit N]         every syntax element with its bit offset
    tkb validate IN.tkb... [--json]      every constraint, profile and level; the clauses
    tkb conformance list|run|matrix|reference ...   the conformance suite (clause 11)
    tkb bench ... / tkb demo ...         delegated to tokenbits.bench / tokenbits.demo

Exit status: 0 success; 1 the stream cannot be decoded (a TKB error); 2 bad usage or
bad input (missing file, bad extension, bad option value, input the encoder cannot
represent); 3 the stream has errors but the rest was decoded / shown (decode without
``--strict``, inspect, trace).  Errors are one line on stderr: ``tkb: error: ...``.

Two track metadata keys are written by ``tkb encode`` only when needed to restore the
input exactly as it was given: ``tkb.shape`` (a leading frame axis of size 1, which
the frame structure does not keep) and ``tkb.dtype`` (an input dtype that TKB has no
code for: integer ids other than uint32, float64).  ``tkb decode`` applies them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from . import decoder as d
from . import levels, prediction, pruning, reconstruction
from .encoder import QP_MAX, QP_MIN
from .errors import TKBBackendError, TKBEncodeError, TKBError
from .merge_map import stand_in_bits

EXIT_OK, EXIT_DECODE, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

INPUT_SUFFIXES = (".npy", ".safetensors", ".pt", ".pth")
OUTPUT_SUFFIXES = (".npy", ".safetensors")
META_SHAPE, META_DTYPE = "tkb.shape", "tkb.dtype"


class CLIError(Exception):
    """An expected failure: printed as one line, mapped to an exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit status 2
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _one_line(x) -> str:
    return " ".join(str(x).split())


def _err(msg: str) -> None:
    print(f"tkb: error: {_one_line(msg)}", file=sys.stderr)


def _note(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"tkb: {msg}", file=sys.stderr)


# -- files ---------------------------------------------------------------------------

def _check_input(path: str, suffixes=None) -> Path:
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise CLIError(f"{path}: unsupported file type {p.suffix or '(none)'!r} "
                       f"(expected {', '.join(suffixes)})")
    if not p.exists():
        raise CLIError(f"{path}: no such file")
    if not p.is_file():
        raise CLIError(f"{path}: not a file")
    return p


def _read_array(path: str):
    p = _check_input(path, INPUT_SUFFIXES)
    from .io import load_array
    try:
        return load_array(p)
    except TKBError:
        raise
    except ImportError as e:
        raise CLIError(f"reading {p.suffix} needs the {e.name or 'missing'} package: "
                       "pip install 'tokenbits[io]'") from None
    except Exception as e:  # a damaged or foreign file: the loader's own message
        raise CLIError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def _read_stream(path: str) -> bytes:
    p = _check_input(path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror or e}") from None


def _check_output(path: str, suffixes=None) -> Path:
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise CLIError(f"{path}: unsupported output file type {p.suffix or '(none)'!r} "
                       f"(expected {', '.join(suffixes)})")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"{path}: directory {parent} does not exist")
    if p.is_dir():
        raise CLIError(f"{path}: is a directory")
    return p


def _write_atomic(path: Path, writer) -> None:
    """``writer(tmp_path)`` then rename: no half-written output on failure."""
    tmp = path.with_name(f".{path.stem}.tkb-partial{path.suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except ImportError as e:
        raise CLIError(f"writing {path.suffix} needs the {e.name or 'missing'} package: "
                       "pip install 'tokenbits[io]'") from None
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


# -- progress ------------------------------------------------------------------------

def _bar(quiet: bool, total=None, unit: str = "it", desc: str = ""):
    """A tqdm bar on stderr when it is a terminal and tqdm is installed; else None."""
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, desc=desc, leave=False, delay=0.5, file=sys.stderr,
                unit_scale=unit == "B")


# -- encode --------------------------------------------------------------------------

def _parse_grid(text: str) -> tuple:
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise CLIError(f"--grid {text!r}: expected HxW with positive integers, e.g. 16x16")
    return int(m[1]), int(m[2])


def _parse_meta(items) -> dict:
    meta = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--meta {item!r}: expected KEY=VALUE")
        if len(key.encode()) > 255:
            raise CLIError(f"--meta key {key[:20]!r}...: at most 255 bytes")
        if key in meta:
            raise CLIError(f"--meta key {key!r} given twice")
        meta[key] = value
    return meta


def _encode_options(a, arr: np.ndarray, bf16: bool) -> tuple[dict, dict]:
    """Validated TrackOptions keywords and the CLI's own track metadata."""
    rates = [n for n, v in (("--qp", a.qp), ("--bpv", a.bpv), ("--target-cos", a.target_cos))
             if v is not None]
    if len(rates) > 1:
        raise CLIError(f"{' and '.join(rates)}: give at most one of --qp, --bpv, --target-cos")
    ids = arr.dtype.kind in "iu" and not bf16
    if a.lossless:
        if rates:
            raise CLIError(f"{rates[0]} does not apply to --lossless")
        if a.output_dtype:
            raise CLIError("--output-dtype does not apply to --lossless (it outputs the "
                           "source dtype)")
    if ids:
        for flag, v in (("--qp", a.qp), ("--bpv", a.bpv), ("--target-cos", a.target_cos),
                        ("--keep", a.keep), ("--keep-coverage", a.keep_coverage),
                        ("--prune", a.prune), ("--output-dtype", a.output_dtype)):
            if v is not None:
                raise CLIError(f"{flag} does not apply to token ids (integer input)")
        if a.predictor != "auto":
            raise CLIError("--predictor does not apply to token ids (integer input)")
    elif a.vocab_size is not None:
        raise CLIError("--vocab-size applies to token ids (integer input)")
    if a.vocab_size is not None and not 1 <= a.vocab_size < 1 << 32:
        raise CLIError(f"--vocab-size {a.vocab_size}: must be in 1..2^32-1")
    if a.qp is not None and not QP_MIN <= a.qp <= QP_MAX:
        raise CLIError(f"--qp {a.qp}: must be in {QP_MIN}..{QP_MAX}")
    if a.bpv is not None and not a.bpv > 0:
        raise CLIError(f"--bpv {a.bpv}: must be positive")
    if a.target_cos is not None and not 0 < a.target_cos <= 1:
        raise CLIError(f"--target-cos {a.target_cos}: must be in (0, 1]")
    if a.keep is not None and not 0 < a.keep <= 1:
        raise CLIError(f"--keep {a.keep}: must be in (0, 1]")
    if a.keep_coverage is not None and not 0 < a.keep_coverage <= 1:
        raise CLIError(f"--keep-coverage {a.keep_coverage}: must be in (0, 1]")
    if a.keep is not None and a.keep_coverage is not None:
        raise CLIError("--keep and --keep-coverage: give at most one")
    if a.prune is not None and a.keep is None and a.keep_coverage is None:
        raise CLIError(f"--prune {a.prune} needs --keep or --keep-coverage")
    if a.prefix < 0:
        raise CLIError(f"--prefix {a.prefix}: must be >= 0")
    if a.prefix and not a.grid:
        raise CLIError("--prefix needs --grid (prefix tokens come before the grid)")
    if a.predictor == "up" and not a.grid:
        raise CLIError("--predictor up needs --grid")
    if (a.transform or a.embed_transform) and (a.lossless or ids):
        raise CLIError("--transform applies to lossy coding of embeddings")
    if a.embed_transform and (not a.transform or a.transform == "auto"):
        raise CLIError("--embed-transform needs --transform MODEL.tkbt")
    if a.level is not None and a.level not in levels.LEVELS:
        raise CLIError(f"--level {a.level}: not a level of TKB version 1 "
                       f"({', '.join(map(str, sorted(levels.LEVELS)))})")

    opts = dict(qp=a.qp, bpv=a.bpv, target_cos=a.target_cos, keep=a.keep,
                keep_coverage=a.keep_coverage, prune=a.prune,
                lossless=a.lossless, grid=_parse_grid(a.grid) if a.grid else None,
                prefix_tokens=a.prefix, predictor=a.predictor, output_dtype=a.output_dtype,
                vocab_size=a.vocab_size)
    for flag, key, lo, hi in (("--tables", "num_tables", 1, 255), ("--lanes", "num_lanes", 1, 4096),
                              ("--lane-steps", "lane_steps", 1, 1 << 16),
                              ("--prob-bits", "prob_bits", 1, 15)):
        v = getattr(a, key)
        if v is not None:
            if not lo <= v <= hi:
                raise CLIError(f"{flag} {v}: must be in {lo}..{hi}")
            opts[key] = v
    if a.exact_lanes:
        if a.num_lanes is None:
            raise CLIError("--exact-lanes needs --lanes")
        opts["exact_lanes"] = True
    if bf16:
        opts["source_dtype"] = "bfloat16"
    track_meta = {}
    if arr.ndim >= 1 and arr.shape[0] == 1 and arr.ndim == (2 if ids else 3):
        track_meta[META_SHAPE] = "x".join(map(str, arr.shape))
    if ids and arr.dtype != np.uint32:
        track_meta[META_DTYPE] = arr.dtype.name
    if arr.dtype == np.float64 and not a.output_dtype:
        track_meta[META_DTYPE] = "float64"
    return opts, track_meta


def _backend_args(p) -> None:
    p.add_argument("--backend", choices=("auto", "gpu", "native", "reference"), default=None,
                   help="GPU kernels, native (libtkb: the C decoder; for encoding its C core "
                        "codes the frames) or numpy reference (default: auto, i.e. the GPU "
                        "when one is present, else native when built; same bytes and values "
                        "either way)")
    p.add_argument("--device", metavar="DEV", help="torch device of the GPU backend (cuda)")


def cmd_encode(a) -> int:
    out = _check_output(a.output)
    if out.exists() and out.resolve() == Path(a.input).resolve():
        raise CLIError(f"{a.output}: the output would overwrite the input")
    arr, dtype_name = _read_array(a.input)
    arr = np.asarray(arr)
    bf16 = dtype_name == "bfloat16"
    in_dtype = "bfloat16" if bf16 else arr.dtype.name
    opts, track_meta = _encode_options(a, arr, bf16)
    if a.transform:
        opts.update(transform=a.transform if a.transform == "auto" else
                    _load_transform(a.transform), embed_transform=a.embed_transform)
    if a.merge_map:
        if arr.dtype.kind in "iu" and not bf16:
            raise CLIError("--merge-map applies to pruned embeddings, not token ids")
        opts["merge_map"] = True
    if a.merge_tokens:
        opts["merge_tokens"] = True
    meta = _parse_meta(a.meta)
    if arr.dtype == np.float64:
        if a.lossless:
            raise CLIError("float64 input cannot be coded losslessly (TKB holds float32, "
                           "float16, bfloat16); convert it first or drop --lossless")
        _note("float64 input is coded from float32", a.quiet)
        arr = arr.astype(np.float32)
    elif arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float16):
        raise CLIError(f"unsupported input dtype {arr.dtype} (float32, float16, bfloat16, "
                       "integer token ids)")
    elif arr.dtype.kind in "iu" and not bf16 and arr.size and int(arr.max()) >= 1 << 32:
        raise CLIError("token ids must be < 2^32")

    from . import encode_tracks
    from .encoder import TrackOptions
    bar = None
    tty = not a.quiet and sys.stderr.isatty()

    def progress(done, total):
        nonlocal bar
        if not tty:
            return
        if bar is None:
            bar = _bar(a.quiet, total, "frame", "encode")
            if bar is None:
                return
        bar.update(done - bar.n)

    try:
        # encode_tracks rather than encode: the CLI's tkb.* keys go to track metadata
        data = encode_tracks([(arr, TrackOptions(**opts, meta=track_meta))],
                             meta=meta or None, level_idc=a.level, index=not a.no_index,
                             progress=progress, backend=a.backend, device=a.device)
    finally:
        if bar is not None:
            bar.close()
    _write_atomic(out, lambda p: p.write_bytes(data))
    if not a.quiet:
        t = opts.get("transform")
        print(_encode_summary(data, arr, in_dtype, out, [t] if t and t != "auto" else None))
    return EXIT_OK


def _encode_summary(data: bytes, arr: np.ndarray, dtype: str, out: Path,
                    transforms=None) -> str:
    header = d.parse_stream_header(data)
    level = levels.get_level(header.level_idc)
    ids = arr.dtype.kind in "iu" and dtype != "bfloat16"
    frames = 1 if arr.ndim == (1 if ids else 2) else arr.shape[0]
    per = "x".join(map(str, arr.shape[-1:] if ids else arr.shape[-2:]))
    extra = ""
    dec = d.Decoder(header, strict=False, keep=False, transforms=transforms)
    for u in d.iter_units(data, level):
        if u.unit_type in (d.UNIT_TRANSFORM, d.UNIT_TPS):
            dec.add_unit(u)
        if dec.stream.tracks:
            extra = ", " + _tps_short(next(iter(next(iter(dec.stream.tracks.values())).values())))
            break
    bpv = 8 * len(data) / max(arr.size, 1)
    return (f"{out}: {frames} frame{'s' * (frames != 1)} of {per} {dtype}, {len(data)} bytes, "
            f"{bpv:.3f} bits/value, profile {levels.PROFILES[header.profile_idc]}, "
            f"level {header.level_idc}{extra}")


# -- decoding with recovery ----------------------------------------------------------

TRANSFORM_DIR_ENV = "TKB_TRANSFORM_DIR"   # as the conformance harness sets it


def _transform_paths(given) -> list:
    """.tkbt files of --transform (files or folders of *.tkbt), else of $TKB_TRANSFORM_DIR."""
    if not given:
        env = os.environ.get(TRANSFORM_DIR_ENV)
        given = [env] if env else []
    out = []
    for p in given:
        out += sorted(Path(p).glob("*.tkbt")) if Path(p).is_dir() else [p]
    return out


def _load_transform(path: str):
    """A .tkbt file (CLIError naming the file when it cannot be used)."""
    from . import tkbt
    try:
        return tkbt.load(path)
    except OSError as e:
        raise CLIError(f"{path}: {e.strerror or e}") from None
    except TKBError as e:
        raise CLIError(f"{path} is not a transform file: {e}", EXIT_DECODE) from None


def _decode(data: bytes, strict: bool, quiet: bool = True, backend: str = "reference",
            device=None, transforms=None):
    """tokenbits.decode with a progress bar; returns (stream, framing error or None)."""
    from . import decode
    bar = _bar(quiet, len(data), "B", "decode")
    try:
        stream = decode(data, strict, progress=bar.update if bar is not None else None,
                        backend=backend, device=device,
                        transforms=[_load_transform(p) for p in _transform_paths(transforms)])
    finally:
        if bar is not None:
            bar.close()
    return stream, stream.framing_error


# -- decode --------------------------------------------------------------------------

def _restore(arr: np.ndarray, meta: dict, frame_dtype: str) -> np.ndarray:
    """Apply the CLI's tkb.dtype / tkb.shape track metadata (see the module doc)."""
    want = meta.get(META_DTYPE)
    if want and frame_dtype != "bfloat16":
        try:
            dt = np.dtype(want)
        except TypeError:
            dt = None
        if dt is not None and dt.kind in "iuf":
            arr = arr.astype(dt)
    shape = meta.get(META_SHAPE)
    if shape:
        try:
            dims = tuple(int(x) for x in shape.split("x"))
        except ValueError:
            dims = None
        if dims and int(np.prod(dims)) == arr.size:
            arr = arr.reshape(dims)
    return arr


def _numbers(ns: list, most: int = 20) -> str:
    return ", ".join(map(str, ns[:most])) + (", ..." if len(ns) > most else "")


def cmd_decode_canonical(a) -> int:
    """``tkb decode --canonical``: the canonical output (clause 10) of every decoded frame,
    and one line per error naming its class: the command-line decoder contract of the
    conformance harness (conformance/README.md)."""
    from .canonical import canonical_bytes
    out = _check_output(a.output)
    data = _read_stream(a.input)
    fatal = False
    try:
        stream, framing = _decode(data, a.strict, a.quiet, a.backend, a.device, a.transform)
        if a.dense:                        # clause 10.4: the dense canonical output
            stream = d.densify_stream(stream)
        errs, canon, fatal = stream.errors, canonical_bytes(stream), framing is not None
    except TKBError as e:                  # stream header, or --strict
        errs, canon, fatal = [e], b"", True
    _write_atomic(out, lambda p: p.write_bytes(canon))
    for e in errs:
        _err(f"{type(e).__name__}: {e}")
    if not errs:
        return EXIT_OK
    return EXIT_DECODE if fatal and not canon else EXIT_PARTIAL


def cmd_decode(a) -> int:
    if a.canonical:
        return cmd_decode_canonical(a)
    out = _check_output(a.output, OUTPUT_SUFFIXES)
    if not 0 <= a.track <= 254:
        raise CLIError(f"--track {a.track}: must be in 0..254")
    data = _read_stream(a.input)
    stream, _ = _decode(data, a.strict, a.quiet, a.backend, a.device, a.transform)
    if a.dense:                            # [num_tokens, D] per frame (clause 7.8)
        stream = d.densify_stream(stream)
    for e in stream.errors:
        _err(e)
    frames = stream.track_frames(a.track)
    if not frames:
        if a.track not in stream.tracks and not stream.errors:
            have = ", ".join(map(str, sorted(stream.tracks))) or "none"
            raise CLIError(f"the stream has no track {a.track} (tracks: {have})")
        raise CLIError(f"no frame of track {a.track} could be decoded", EXIT_DECODE)
    dtype = frames[0].dtype
    numbers = {n for n, _ in stream.index.get(a.track, [])} | {f.frame_number for f in frames}
    lost = sorted(numbers - {f.frame_number for f in frames})
    pruned = (any(f.num_kept != f.num_tokens for f in frames)
              or len({f.values.shape for f in frames}) != 1)
    suffix = out.suffix.lower()
    if pruned:
        if suffix == ".npy":
            raise CLIError(f"the frames of track {a.track} are pruned or differ in size, "
                           "which .npy cannot hold: write .safetensors (tensors "
                           "values_<track>_<frame> and positions_<track>_<frame>)")
        arrays, dtypes = {}, {}
        for f in frames:
            key = f"values_{a.track}_{f.frame_number}"
            if key in arrays:
                raise CLIError(f"track {a.track} holds frame number {f.frame_number} twice",
                               EXIT_DECODE)
            arrays[key] = f.values
            arrays[f"positions_{a.track}_{f.frame_number}"] = f.positions
            if f.dtype == "bfloat16":
                dtypes[key] = "bfloat16"
        shape = f"{len(frames)} pruned frame{'s' * (len(frames) != 1)}"
    else:
        from . import to_array
        arr = to_array(stream, a.track)
        if len(frames) == 1 and arr.ndim == (1 if frames[0].values.ndim == 1 else 2) and \
                len(numbers) > 1:
            arr = arr[None]  # frames were lost: keep the frame axis of the stream
        if dtype == "bfloat16" and suffix == ".npy":
            raise CLIError("bfloat16 values cannot be written to .npy (numpy has no "
                           "bfloat16): write .safetensors")
        arr = _restore(arr, stream.metadata.get(a.track, {}), dtype)
        key = f"values_{a.track}"
        arrays, dtypes = {key: arr}, ({key: "bfloat16"} if dtype == "bfloat16" else {})
        shape = "x".join(map(str, arr.shape)) + f" {dtypes.get(key, arr.dtype.name)}"
    from .io import save_arrays
    _write_atomic(out, lambda p: save_arrays(p, arrays, dtypes))
    if not a.quiet:
        errors = f", {len(stream.errors)} error{'s' * (len(stream.errors) != 1)}" \
            if stream.errors else ""
        if lost:
            errors += f", frame{'s' * (len(lost) != 1)} {_numbers(lost)} lost"
        print(f"{out}: track {a.track}, {len(frames)} frame{'s' * (len(frames) != 1)} "
              f"({_numbers([f.frame_number for f in frames])}), {shape}{errors}")
    return EXIT_PARTIAL if stream.errors else EXIT_OK


# -- inspect -------------------------------------------------------------------------

def _transform_info(tid: int, t, stream) -> dict:
    meta = stream.metadata.get(d.STREAM_TRACK, {})
    return dict(transform_id=tid, channels=t.num_channels, coeffs=t.num_coeffs,
                sha256=t.hexdigest, energy=meta.get("transform.energy") or
                t.meta.get("transform.energy"), coeff_frac_bits=t.coeff_frac_bits,
                basis_frac_bits=t.basis_frac_bits, data_bytes=len(t.data))


def _tps_info(tps: dict) -> dict:
    info = dict(tps_id=tps["tps_id"],
                kind="ids" if tps["track_kind"] == 1 else "embeddings",
                source_dtype=reconstruction.DTYPES.get(tps["source_dtype"]),
                output_dtype=reconstruction.DTYPES.get(tps["output_dtype"]),
                channels=tps["num_channels"],
                coding_mode={0: "quantized", 1: "split", 2: "transform"}[tps["coding_mode"]])
    if tps["coding_mode"] == 2:
        info["transform_id"] = tps["transform_id"]
        info["coeffs"] = tps["num_coded"]
    if tps["track_kind"] == 1:
        info["vocab_size"] = tps["vocab_size"]
    info["grid"] = (dict(height=tps["grid_height"], width=tps["grid_width"],
                         prefix_tokens=tps["num_prefix_tokens"])
                    if tps["grid_present"] else None)
    info["max_tokens"] = tps["max_tokens"]
    if tps["coding_mode"] != 1:
        codes = np.asarray(tps["step_code"], dtype=np.int64)
        info["predictor"] = prediction.PREDICTORS.get(tps["predictor"], tps["predictor"])
        info["per_channel_steps"] = bool(tps["per_channel_steps"])
        info["step_code"] = [int(codes.min()), int(codes.max())] if codes.size > 1 \
            else int(codes[0])
        info["qp"] = int(np.median(codes)) - reconstruction.STEP_CODE_UNITY
    else:
        info["raw_bits"] = tps["raw_bits"]
    info["tables"] = tps["num_tables"]
    info["alphabet_sizes"] = [int(t.size) for t in tps["tables"]]
    info["lanes"] = tps["num_lanes"]
    info["lane_steps"] = tps["lane_steps"]
    info["prob_bits"] = tps["prob_bits"]
    return info


def _tps_short(tps: dict) -> str:
    if tps["coding_mode"] == 1:
        return "lossless" if tps["track_kind"] == 0 else "token ids"
    codes = np.asarray(tps["step_code"], dtype=np.int64)
    coeffs = f", {tps['num_coded']} transform coefficients" if tps["coding_mode"] == 2 else ""
    return (f"qp {int(np.median(codes)) - reconstruction.STEP_CODE_UNITY}, predictor "
            f"{prediction.PREDICTORS.get(tps['predictor'])}{coeffs}")


def _inspect_info(path: str, data: bytes, transforms=None) -> tuple[dict, bool]:
    stream, framing = _decode(data, strict=False, transforms=transforms)
    h = stream.header
    units = {u.offset: u for u, _ in stream.units}
    info = dict(file=str(path), bytes=len(data),
                header=dict(version=f"{h.version_major}.{h.version_minor}",
                            version_major=h.version_major, version_minor=h.version_minor,
                            profile_idc=h.profile_idc,
                            profile=levels.PROFILES.get(h.profile_idc),
                            level_idc=h.level_idc))
    frames, per_track = [], {}
    total_values = 0
    for f in stream.frames:
        tps = stream.tracks[f.track_id][f.tps_id]
        u = units.get(f.offset)
        nbytes = u.size if u is not None else None
        values = f.num_tokens * tps["num_channels"]
        total_values += values
        merge = None if f.stand_ins is None else dict(
            stand_ins=int(f.stand_ins.size),
            bits=int(f.stand_ins.size) * stand_in_bits(f.num_kept))   # clause 7.8
        frames.append(dict(track=f.track_id, frame=f.frame_number, offset=f.offset,
                           tokens=f.num_tokens, kept=f.num_kept, channels=tps["num_channels"],
                           dtype=f.dtype, bytes=nbytes, merge_map=merge,
                           bits_per_value=(8 * nbytes / values) if values and nbytes else None))
        t = per_track.setdefault(f.track_id, [0, 0, 0])
        t[0] += 1
        t[1] += values
        t[2] += nbytes or 0
    tracks = []
    for tid in sorted(stream.tracks):
        n, values, nbytes = per_track.get(tid, [0, 0, 0])
        tracks.append(dict(track=tid, parameter_sets=[_tps_info(stream.tracks[tid][k])
                                                      for k in sorted(stream.tracks[tid])],
                           frames=n, values=values, frame_bytes=nbytes,
                           bits_per_value=8 * nbytes / values if values else None))
    info["tracks"] = tracks
    info["transforms"] = [_transform_info(i, t, stream) for i, t in
                          sorted(stream.transforms.items())]
    info["frames"] = frames
    info["totals"] = dict(frames=len(frames), values=total_values, bytes=len(data),
                          bits_per_value=8 * len(data) / total_values if total_values else None)
    info["metadata"] = {("stream" if k == d.STREAM_TRACK else str(k)): dict(v)
                        for k, v in sorted(stream.metadata.items(),
                                           key=lambda kv: (kv[0] != d.STREAM_TRACK, kv[0]))}
    info["index"] = {str(k): [dict(frame=n, offset=o) for n, o in v]
                     for k, v in sorted(stream.index.items())}
    rows = []
    for i, (u, status) in enumerate(stream.units):
        rows.append(dict(unit=i, offset=u.offset, type=d.UNIT_TYPES.get(u.unit_type,
                                                                       f"type {u.unit_type}"),
                         track="stream" if u.track_id == d.STREAM_TRACK else u.track_id,
                         essential=u.unit_essential, bytes=u.size,
                         crc="ok" if u.crc_ok else "mismatch",
                         status="ok" if status == "ok" else status.removeprefix("error: ")))
    if framing is not None:
        rows.append(dict(unit=len(rows), offset=framing.offset, type=None, track=None,
                         essential=None, bytes=None, crc=None,
                         status=f"{framing} (the units after it cannot be found)"))
    info["units"] = rows
    info["errors"] = [str(e) for e in stream.errors]
    return info, bool(stream.errors)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _fmt_bpv(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _table(rows: list, cols: list) -> list:
    """Left-aligned text columns: cols = [(header, key)], rows of dicts."""
    cells = [[h for h, _ in cols]] + [[("-" if r.get(k) is None else str(r.get(k)))
                                       for _, k in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return ["  " + "  ".join(c[i].ljust(widths[i]) for i in range(len(cols))).rstrip()
            for c in cells]


def _render_inspect(info: dict) -> str:
    h = info["header"]
    lines = [f"file      {info['file']} ({info['bytes']} bytes)",
             f"stream    TKB version {h['version']}, profile {h['profile']} "
             f"({h['profile_idc']}), level {h['level_idc']}"]
    lines.append("tracks")
    if not info["tracks"]:
        lines.append("  (none)")
    for t in info["tracks"]:
        lines.append(f"  track {t['track']}: {t['frames']} frame{'s' * (t['frames'] != 1)}, "
                     f"{t['frame_bytes']} frame bytes, {_fmt_bpv(t['bits_per_value'])} "
                     "bits/value")
        for p in t["parameter_sets"]:
            grid = (f"grid {p['grid']['height']}x{p['grid']['width']} + "
                    f"{p['grid']['prefix_tokens']} prefix" if p["grid"]
                    else f"no grid, max {p['max_tokens']} tokens")
            dt = p["source_dtype"] if p["source_dtype"] == p["output_dtype"] else \
                f"{p['source_dtype']} -> {p['output_dtype']}"
            vocab = f", vocab {p['vocab_size']}" if "vocab_size" in p else ""
            lines.append(f"    tps {p['tps_id']}: {p['kind']}, {dt}, {p['channels']} "
                         f"channel{'s' * (p['channels'] != 1)}{vocab}, {grid}")
            if p["coding_mode"] != "split":
                steps = p["step_code"]
                steps = f"{steps[0]}..{steps[1]}" if isinstance(steps, list) else steps
                what = (f"transform {p['transform_id']} ({p['coeffs']} coefficients)"
                        if p["coding_mode"] == "transform" else "quantized")
                coding = (f"{what}, predictor {p['predictor']}, qp {p['qp']} "
                          f"(step code {steps}"
                          f"{', per channel' if p['per_channel_steps'] else ''})")
            else:
                coding = f"split (lossless), raw_bits {p['raw_bits']}"
            alph = ", ".join(map(str, p["alphabet_sizes"][:8])) + \
                (", ..." if len(p["alphabet_sizes"]) > 8 else "")
            lines.append(f"            {coding}")
            lines.append(f"            {p['tables']} table{'s' * (p['tables'] != 1)} "
                         f"(alphabet {alph}), prob_bits {p['prob_bits']}, "
                         f"{p['lanes']} lane{'s' * (p['lanes'] != 1)} x {p['lane_steps']} steps")
    if info["transforms"]:
        lines.append("transforms")
        for t in info["transforms"]:
            energy = f", energy kept {t['energy']}" if t["energy"] else ""
            lines.append(f"  transform {t['transform_id']}: D {t['channels']}, K {t['coeffs']}"
                         f"{energy}, {t['data_bytes']} bytes, sha256 {t['sha256']}")
    lines.append("frames")
    if info["frames"]:
        rows = [dict(f, bpv=_fmt_bpv(f["bits_per_value"]),
                     merge="-" if f["merge_map"] is None else
                     f"{f['merge_map']['stand_ins']} ({f['merge_map']['bits']} bits)")
                for f in info["frames"]]
        cols = [("track", "track"), ("frame", "frame"), ("offset", "offset"),
                ("tokens", "tokens"), ("kept", "kept"), ("bytes", "bytes"),
                ("bits/value", "bpv")]
        if any(f["merge_map"] is not None for f in info["frames"]):
            cols.append(("merge map", "merge"))
        lines += _table(rows, cols)
    else:
        lines.append("  (none decoded)")
    tot = info["totals"]
    lines.append(f"total     {tot['frames']} frames, {tot['values']} values, {tot['bytes']} "
                 f"bytes, {_fmt_bpv(tot['bits_per_value'])} bits/value")
    lines.append("metadata")
    if not info["metadata"]:
        lines.append("  (none)")
    for k, m in info["metadata"].items():
        label = "stream" if k == "stream" else f"track {k}"
        for key, value in m.items():
            v = value if len(value) <= 80 else value[:77] + "..."
            lines.append(f"  {label}: {key} = {_one_line(repr(v))[1:-1]}")
    lines.append("index")
    if not info["index"]:
        lines.append("  (none)")
    for k, entries in info["index"].items():
        shown = ", ".join(f"frame {e['frame']} @ {e['offset']}" for e in entries[:8])
        more = f", ... ({len(entries)} entries)" if len(entries) > 8 else ""
        lines.append(f"  track {k}: {shown}{more}")
    lines.append("units")
    lines += _table(info["units"], [("#", "unit"), ("offset", "offset"), ("type", "type"),
                                    ("track", "track"), ("bytes", "bytes"), ("crc", "crc"),
                                    ("status", "status")])
    if info["errors"]:
        lines.append(f"errors    {len(info['errors'])}")
        lines += [f"  {e}" for e in info["errors"]]
    return "\n".join(lines)


def cmd_inspect(a) -> int:
    data = _read_stream(a.input)
    info, bad = _inspect_info(a.input, data, a.transform)
    if a.json:
        print(json.dumps(info, indent=2, default=_json_default))
    else:
        print(_render_inspect(info))
    return EXIT_PARTIAL if bad else EXIT_OK


# -- trace ---------------------------------------------------------------------------

def cmd_trace(a) -> int:
    if a.limit is not None and a.limit < 0:
        raise CLIError(f"--limit {a.limit}: must be >= 0")
    from . import tracing
    data = _read_stream(a.input)
    status = EXIT_OK
    for n, ev in enumerate(tracing.walk(data)):
        if a.limit is not None and n >= a.limit:
            break
        print(tracing.line(ev, data))
        if isinstance(ev, tracing.Problem):
            status = EXIT_DECODE if ev.unit is None else EXIT_PARTIAL
    return status


def cmd_transform_fit(a) -> int:
    from . import tkbt
    from .transform_fit import fit_transform
    out = _check_output(a.output, (tkbt.SUFFIX,))
    arrays = []
    for path in a.inputs:
        arr, dtype_name = _read_array(path)
        arr = np.asarray(arr)
        if arr.dtype.kind != "f" and dtype_name != "bfloat16":
            raise CLIError(f"{path}: a transform is fitted on float tokens, not {arr.dtype}")
        arrays.append(arr)
    t = fit_transform(arrays, coeffs=a.coeffs, energy=a.energy, basis_bits=a.basis_bits,
                      meta=_parse_meta(a.meta))
    _write_atomic(out, lambda p: tkbt.save(t, p))
    if not a.quiet:
        print(f"{out}: D {t.num_channels}, K {t.num_coeffs}, energy kept "
              f"{t.meta['transform.energy']}, {out.stat().st_size} bytes, sha256 {t.hexdigest}")
    return EXIT_OK


def backends_report() -> str:
    """One line per backend: whether it can run here, and why not (``tkb backends``)."""
    from .kernels import dispatch
    lines = []
    for name, why in dispatch.backends().items():
        extra = ""
        if name == "native" and why is None:
            from . import native
            extra = f" ({native.version()}, {native.simd()}; tkbdec: {native.tkbdec_path()})"
        lines.append(f"{name:10} {'available' + extra if why is None else 'missing: ' + why}")
    auto = [dispatch.choose(None, "encode"), dispatch.choose(None, "decode")]
    lines.append(f"auto       encodes with {auto[0]}, decodes with {auto[1]}")
    return "\n".join(lines)


def cmd_backends(a) -> int:
    print(backends_report())
    return EXIT_OK


def cmd_validate(a) -> int:
    from .validate import render, validate
    reports = []
    for path in a.input:
        rep = validate(_read_stream(path),
                       [_load_transform(p) for p in _transform_paths(a.transform)])
        reports.append((path, rep))
        if not a.json:
            print(render(rep, path))
    if a.json:
        print(json.dumps([dict(file=p, **r.to_dict()) for p, r in reports], indent=1,
                         default=_json_default))
    return EXIT_OK if all(r.valid for _, r in reports) else EXIT_DECODE


# -- bench, demo ---------------------------------------------------------------------

def _delegate(name: str, args: list) -> int:
    import importlib
    module = {"conformance": "conformance.cli"}.get(name, name)
    try:
        mod = importlib.import_module(f".{module}", __package__ or "tokenbits")
    except ImportError as e:
        raise CLIError(f"'tkb {name}' is not available: tokenbits.{name} cannot be imported "
                       f"({e})", EXIT_DECODE) from None
    fn = getattr(mod, "main", None)
    if not callable(fn):
        raise CLIError(f"'tkb {name}' is not available: tokenbits.{name} has no main()",
                       EXIT_DECODE)
    rc = fn(list(args))
    return rc if isinstance(rc, int) else EXIT_OK


# -- argument parsing ----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="tkb", description="TKB token bitstreams: encode, decode, inspect.")
    p.add_argument("--version", action="version", version=f"tkb (tokenbits) {__version__}; "
                   "backends: see 'tkb backends'")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    e = sub.add_parser("encode", help="encode .npy/.safetensors/.pt tokens into a .tkb stream",
                       description="Encode one array: float [N, D] (one frame) or "
                                   "[F, N, D] (F frames); integer [N] or [F, N] token ids.")
    e.add_argument("input", metavar="IN", help=".npy, .safetensors or .pt file with one tensor")
    e.add_argument("-o", "--output", metavar="OUT.tkb", required=True)
    rate = e.add_argument_group("rate (at most one; default: --target-cos 0.99)")
    rate.add_argument("--qp", type=int, help="quantization parameter: step = 2^(qp/6)")
    rate.add_argument("--bpv", type=float, metavar="BITS",
                      help="finest quality within BITS bits per value")
    rate.add_argument("--target-cos", type=float, metavar="C",
                      help="coarsest quality with mean token cosine >= C")
    e.add_argument("--keep", type=float, metavar="FRACTION",
                   help="keep this fraction of the (non-prefix) tokens of each frame")
    e.add_argument("--keep-coverage", type=float, metavar="C",
                   help="keep per frame the fewest tokens whose coverage (mean over the "
                        "tokens of the best cosine to a kept token) reaches C (Annex B.2)")
    e.add_argument("--prune", choices=list(pruning.POLICIES), metavar="POLICY",
                   help="token selection policy for --keep/--keep-coverage (Annex B.2): "
                        f"{', '.join(pruning.POLICIES)}; default {pruning.DEFAULT_POLICY}")
    e.add_argument("--lossless", action="store_true", help="bit-exact (split) coding")
    e.add_argument("--meta", action="append", metavar="KEY=VALUE",
                   help="stream-level metadata entry (repeatable)")
    e.add_argument("--grid", metavar="HxW", help="tokens form an H x W grid (after --prefix)")
    e.add_argument("--prefix", type=int, default=0, metavar="P",
                   help="prefix tokens before the grid (e.g. CLS)")
    e.add_argument("--predictor", choices=("auto", "none", "left", "up"), default="auto")
    e.add_argument("--output-dtype", choices=("float32", "float16", "bfloat16"),
                   help="dtype the decoder outputs (lossy; default: the input's)")
    e.add_argument("--level", type=int, metavar="IDC",
                   help=f"level_idc ({', '.join(map(str, sorted(levels.LEVELS)))}; "
                        "default: the smallest that fits)")
    e.add_argument("--no-index", action="store_true", help="omit the random-access index")
    e.add_argument("--vocab-size", type=int, metavar="V", help="vocabulary size of token ids")
    e.add_argument("--transform", metavar="MODEL.tkbt|auto",
                   help="code transform coefficients (clause 6.7): a model transform named "
                        "by its digest, or 'auto' (fitted on the input, carried inline, "
                        "used only where the stream gets smaller)")
    e.add_argument("--embed-transform", action="store_true",
                   help="carry the --transform file inline instead of by reference")
    e.add_argument("--merge-map", action="store_true",
                   help="pruned frames carry a merge map: the kept token that stands in for "
                        "each pruned one, so that `tkb decode --dense` fills them (clause "
                        "7.8; High profile)")
    e.add_argument("--merge-tokens", action="store_true",
                   help="code each kept token as the mean of the tokens it stands in for "
                        "(ToMe-style merging, Annex B.2)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    _backend_args(e)
    lay = e.add_argument_group("entropy-coder layout (default: chosen by the encoder)")
    lay.add_argument("--tables", dest="num_tables", type=int, metavar="N",
                     help="frequency tables (fewer and smaller tables decode faster on GPUs)")
    lay.add_argument("--prob-bits", dest="prob_bits", type=int, metavar="B",
                     help="probability precision of the tables")
    lay.add_argument("--lanes", dest="num_lanes", type=int, metavar="L",
                     help="interleaved rANS lanes per chunk")
    lay.add_argument("--exact-lanes", dest="exact_lanes", action="store_true",
                     help="use --lanes as given (default: at most --lanes, fewer for small "
                          "frames, Annex B.5)")
    lay.add_argument("--lane-steps", dest="lane_steps", type=int, metavar="S",
                     help="symbols per lane in a chunk")
    e.set_defaults(func=cmd_encode)

    dd = sub.add_parser("decode", help="decode a .tkb stream to .npy or .safetensors",
                        description="Decode one track.  Pruned frames (or frames of "
                                    "different sizes) go to .safetensors as values_<track>_"
                                    "<frame> and positions_<track>_<frame>.")
    dd.add_argument("input", metavar="IN.tkb")
    dd.add_argument("-o", "--output", metavar="OUT", required=True, help=".npy or .safetensors")
    dd.add_argument("--track", type=int, default=0, metavar="T", help="track to decode (0)")
    dd.add_argument("--transform", action="append", metavar="MODEL.tkbt",
                    help="a transform the stream names by digest, or a folder of .tkbt "
                         "files (repeatable; default: $TKB_TRANSFORM_DIR)")
    dd.add_argument("--strict", action="store_true",
                    help="stop at the first error (default: skip damaged units, exit 3)")
    dd.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    dd.add_argument("--canonical", action="store_true",
                    help="write the canonical decoded output of all tracks (spec clause 10) "
                         "to OUT, errors with their class on stderr (the conformance "
                         "decoder contract)")
    dd.add_argument("--dense", action="store_true",
                    help="every frame [num_tokens, D]: pruned positions filled from their "
                         "stand-ins (merge map) or zeros (clause 7.8), so pruned tracks "
                         "write [F, N, D]; with --canonical, the dense canonical output "
                         "(clause 10.4)")
    _backend_args(dd)
    dd.set_defaults(func=cmd_decode)

    i = sub.add_parser("inspect", help="show the structure of a .tkb stream")
    i.add_argument("input", metavar="IN.tkb")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--transform", action="append", metavar="MODEL.tkbt",
                   help="a transform the stream names by digest (repeatable)")
    i.set_defaults(func=cmd_inspect)

    tf = sub.add_parser("transform", help="channel transforms (.tkbt): fit")
    tsub = tf.add_subparsers(dest="transform_command", required=True)
    fit = tsub.add_parser("fit", help="fit a PCA transform on calibration tokens",
                          description="Fit a model transform (mean + PCA basis, clause 6.7) "
                                      "on tokens [N, D] or [F, N, D]; streams name it by its "
                                      "SHA-256 (tkb encode --transform MODEL.tkbt).")
    fit.add_argument("inputs", metavar="TOKENS", nargs="+", help=".npy/.safetensors/.pt")
    fit.add_argument("-o", "--output", metavar="MODEL.tkbt", required=True)
    k = fit.add_mutually_exclusive_group()
    k.add_argument("--coeffs", type=int, metavar="K", help="number of coefficients")
    k.add_argument("--energy", type=float, metavar="E",
                   help="keep the fewest coefficients holding this share of the energy "
                        "(default 0.999)")
    fit.add_argument("--basis-bits", type=int, default=8, metavar="B",
                     help="bits of each basis entry (2..16, default 8)")
    fit.add_argument("--meta", action="append", metavar="KEY=VALUE",
                     help="metadata of the transform file, e.g. model.name=...")
    fit.add_argument("-q", "--quiet", action="store_true", help="no summary")
    fit.set_defaults(func=cmd_transform_fit)

    t = sub.add_parser("trace", help="list every syntax element with its bit offset")
    t.add_argument("input", metavar="IN.tkb")
    t.add_argument("--limit", type=int, metavar="N", help="print at most N lines")
    t.set_defaults(func=cmd_trace)

    v = sub.add_parser("validate", help="check a stream against every constraint of the spec",
                       description="Check every syntax and semantic constraint, and the "
                                   "claimed profile and level; name the clause of each "
                                   "violation.  Exit 0: valid, 1: invalid.")
    v.add_argument("input", metavar="IN.tkb", nargs="+")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.add_argument("--transform", action="append", metavar="MODEL.tkbt",
                   help="a transform the streams name by digest, or a folder of .tkbt "
                        "files (repeatable; default: $TKB_TRANSFORM_DIR)")
    v.set_defaults(func=cmd_validate)

    b = sub.add_parser("backends", help="the implementations that can run here (reference, "
                                        "native, gpu) and what auto picks")
    b.set_defaults(func=cmd_backends)

    for name, what in (("bench", "benchmarks (tokenbits.bench)"),
                       ("demo", "demonstration (tokenbits.demo)"),
                       ("conformance", "conformance suite: list, run, matrix, reference "
                                       "(tokenbits.conformance)")):
        s = sub.add_parser(name, help=what, add_help=False)
        s.add_argument("args", nargs=argparse.REMAINDER)
        s.set_defaults(func=None, delegate=name)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("bench", "demo", "conformance"):  # options of their own
            return _delegate(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        if getattr(args, "delegate", None):
            return _delegate(args.delegate, args.args)
        return args.func(args)
    except CLIError as e:
        _err(e)
        return e.code
    except TKBBackendError as e:
        _err(e)
        return EXIT_USAGE
    except TKBEncodeError as e:
        _err(e)
        return EXIT_USAGE
    except TKBError as e:
        _err(e)
        return EXIT_DECODE
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        print("tkb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. tkb trace x.tkb | head
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
