"""The reference encoder (informative, spec Annex B): tracks and streams.

Nothing here is normative: any choice that yields a valid stream is allowed.
What it does, per track, and where each tool lives:

* pruning (B.2, ``pruning``): prefix tokens are always kept; of the other tokens the
  fraction ``keep`` chosen by the policy ``prune`` (default: the balanced coverage
  greedy), or the fewest reaching ``keep_coverage``; merge maps and merged tokens;
* steps and quantization (B.1, ``rate_control``; the quantizers in ``quantization``):
  one step code ``qp + 144`` (step = 2^(qp/6)), optional per-channel offsets, and a
  per-token offset round(6 log2(|token| / median |token|)) so that every token gets the
  same relative error (mean token cosine is what users measure); ``target_cos`` and
  ``bpv`` search the qp; rounding, or (option ``deadzone``, the default with a
  transform) a closed-loop quantizer that quantizes each prediction residual with a
  deadzone;
* prediction (B.4, ``rate_control``; ``split_fit`` for split tracks): none / left / up,
  chosen by the smallest estimated size;
* tables (B.3, ``table_fit``): channels sorted by scale, cut into 2^k groups and refined
  by Lloyd iterations; more tables are tried while they pay for their own cost;
* lanes and chunks (B.5, here: ``TrackEncoder._finish_tps``): about 2048 symbols a lane;
* lossless (split) tracks (B.6, ``split_fit``): the value's bit pattern -- or, with a
  predictor, the zigzag residual of its order-preserving integer -- cut into
  entropy-coded top bits and raw low bits, the split chosen by estimated size;
* transforms (B.7, ``transform_fit``; ``transform='auto'`` here, per stream);
* streams (B.8, here and ``stream_layout``): :func:`encode_tracks`, :func:`encode`, and
  :class:`StreamWriter` (streaming encode, tables fitted on calibration frames with
  every symbol codable).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import levels, prediction, pruning, rans, reconstruction, symbols, syntax, tables
from . import transform as tr
from . import transform_fit
from .bitio import BitWriter
from .decoder import STREAM_TRACK, UNIT_FRAME, UNIT_INDEX, UNIT_METADATA, UNIT_TPS, UNIT_TRANSFORM
from .errors import TKBEncodeError, TKBError
from .fit_kernels import NUMPY_KERNELS, FitKernels
from .merge_map import PRESENCE_WITH_MERGE_MAP, write_merge_map
from .presence import write_presence_map
from .quantization import DTYPE_CODE, float_view, source_dtype, token_norms
from .rate_control import QP_MAX, QP_MIN, QuantizedFit
from .split_fit import SplitFit
from .stream_layout import index_payload, metadata_payload, stream_header, unit
from .table_fit import choose_prob_bits

SYMBOL_NOT_IN_TABLE = ("a symbol has no frequency in the track's tables "
                       "(frame statistics differ from the calibration frames)")


# -- options -----------------------------------------------------------------------

@dataclass
class TrackOptions:
    """Encoder controls of one track (names as the CLI flags)."""
    qp: int | None = None
    bpv: float | None = None
    target_cos: float | None = None
    keep: float | None = None
    prune: str | None = None           # B.2 selection policy (pruning.POLICIES; None: default)
    keep_coverage: float | None = None  # B.2: per frame, the fewest tokens reaching it
    lossless: bool = False
    grid: tuple | None = None          # (grid_height, grid_width)
    prefix_tokens: int = 0
    predictor: str = "auto"            # none | left | up | auto
    per_channel_steps: bool | None = None  # B.1 offsets per coded channel; None: on with a
    #                                    transform (B.7), else off
    step_tilt: float | None = None     # B.1 offsets round(tilt x log2(rms / median rms));
    #                                    None: -2 with a transform (B.7), else 3
    token_scale: bool = True
    deadzone: float | None = None      # B.1: > 0 the closed-loop quantizer's deadzone; None:
    #                                    with a transform, closed loop with the best of
    #                                    rate_control.DEADZONES, else rounding (as 0)
    output_dtype: str | None = None    # lossy: float32 | float16 | bfloat16 (default: source)
    num_tables: int | None = None      # None: chosen by size
    prob_bits: int | None = None       # None: chosen from the alphabet (Annex B.3)
    num_lanes: int = 32
    lane_steps: int | None = None
    exact_lanes: bool = False          # num_lanes as given, not capped by the size (B.5)
    vocab_size: int | None = None      # ids tracks
    source_dtype: str | None = None    # "bfloat16": the input holds bfloat16 bit patterns
    max_tokens: int | None = None      # tracks without grid: the largest frame (default: seen)
    transform: object = None           # a Transform, a .tkbt path or bytes, or "auto" (B.7)
    embed_transform: bool = False      # carry the transform inline instead of by reference
    merge_map: bool = False            # pruned frames carry a merge map (6.4, 7.8; High)
    merge_tokens: bool = False         # B.2: a kept token coded as the mean of the tokens
    #                                    it stands in for (ToMe-style merging)

    def __post_init__(self):
        def bad(msg):
            raise TKBEncodeError(msg)
        if self.output_dtype not in (None, "float32", "float16", "bfloat16"):
            bad(f"output_dtype {self.output_dtype!r}: float32, float16 or bfloat16")
        if self.predictor not in ("auto", "none", "left", "up"):
            bad(f"predictor {self.predictor!r}: auto, none, left or up")
        if self.keep is not None and not 0 <= self.keep <= 1:
            bad(f"keep {self.keep} is not a fraction in 0..1")
        if self.keep_coverage is not None:
            if isinstance(self.keep_coverage, bool) or not 0 < self.keep_coverage <= 1:
                bad(f"keep_coverage {self.keep_coverage} is not in (0, 1]")
            if self.keep is not None:
                bad("give at most one of keep, keep_coverage")
        if self.prune is not None:
            if not callable(self.prune):
                pruning.check_policy(self.prune)
            if self.keep is None and self.keep_coverage is None:
                bad(f"prune {self.prune!r} needs keep or keep_coverage")
        if self.merge_tokens:
            if self.keep is None and self.keep_coverage is None:
                bad("merge_tokens needs keep or keep_coverage")
            if self.lossless:
                bad("merge_tokens changes the kept tokens: not with lossless")
        if self.qp is not None and not QP_MIN <= self.qp <= QP_MAX:
            bad(f"qp {self.qp} not in {QP_MIN}..{QP_MAX}")
        if self.deadzone is not None and not 0 <= self.deadzone <= 0.5:
            bad(f"deadzone {self.deadzone} not in 0..0.5")
        if self.bpv is not None and self.bpv <= 0:
            bad("bpv must be positive")
        if self.target_cos is not None and not 0 < self.target_cos <= 1:
            bad("target_cos must be in (0, 1]")
        if sum(v is not None for v in (self.qp, self.bpv, self.target_cos)) > 1:
            bad("give at most one of qp, bpv, target_cos")
        if self.prob_bits is not None and not 1 <= self.prob_bits <= tables.MAX_PROB_BITS:
            bad(f"prob_bits {self.prob_bits} not in 1..{tables.MAX_PROB_BITS}")
        if self.num_lanes < 1 or (self.lane_steps is not None and self.lane_steps < 1):
            bad("num_lanes and lane_steps must be at least 1")
        if self.vocab_size is not None and not 1 <= self.vocab_size <= levels.LEVELS[30].max_vocab:
            bad(f"vocab_size {self.vocab_size} not in 1..2^31")
    meta: dict = field(default_factory=dict)

    @property
    def prunes(self) -> bool:
        """Whether these options drop tokens (Annex B.2): a keep below 1, or keep_coverage."""
        return self.keep_coverage is not None or (self.keep is not None and not self.keep >= 1)


# -- pruning ------------------------------------------------------------------------

# Annex B.2 lives in pruning.py; these names stay importable from here
prune_scores, select_kept, prune = pruning.prune_scores, pruning.select_kept, pruning.prune


# -- one track ----------------------------------------------------------------------

class TrackEncoder(QuantizedFit, SplitFit):
    """Builds a track parameter set from sample frames, then encodes frames against it.
    The fit of a quantized track is :class:`rate_control.QuantizedFit` (B.1, B.4), of a
    split track :class:`split_fit.SplitFit` (B.6)."""

    def __init__(self, frames, opts: TrackOptions, level: levels.Level, pseudo: bool = False,
                 kernels: FitKernels | None = None, positions: list | None = None):
        """``positions``: the frames' kept positions when they are known already (a trial
        of the bpv search: the selection does not depend on the step sizes); else the
        selection of Annex B.2 (``kernels.positions``)."""
        self.opts = opts
        self.kernels = kernels or NUMPY_KERNELS   # the fit's numeric steps (FitKernels)
        self.level = level
        self._frames = frames
        self.merge_maps = 0      # frames written with a merge map (they need High, 8.1)
        self.deadzone = 0.0      # the closed-loop quantizer's deadzone (B.1; _fit_quant)
        self.closed_loop = False
        first = frames[0]
        self.src = opts.source_dtype or source_dtype(first)
        self.ids = self.src == "uint32"
        self.lossless = opts.lossless or self.ids
        arrs = [np.asarray(f) for f in frames]
        if self.ids:
            arrs = [a.reshape(-1, 1) for a in arrs]
        self.d = arrs[0].shape[1]
        self.transform = None if self.lossless else _resolve_transform(opts.transform)
        if self.transform is not None and self.transform.num_channels != self.d:
            raise TKBEncodeError(f"the transform has {self.transform.num_channels} channels, "
                                 f"the tokens {self.d}")
        self.dc = self.d if self.transform is None else self.transform.num_coeffs
        self.tps = self._base_tps(arrs)
        self.positions = positions if positions is not None else \
            self.kernels.positions(self, arrs)
        if self.ids and opts.merge_tokens:
            raise TKBEncodeError("merge_tokens applies to embedding tracks")
        arrs = [self.merged(a, p) for a, p in zip(arrs, self.positions)]
        if self.lossless:
            self._fit_split(arrs, pseudo)
        else:
            self._fit_quant(arrs, pseudo)
        self._finish_tps()

    # geometry, dtypes
    def _base_tps(self, arrs) -> dict:
        o = self.opts
        n = arrs[0].shape[0]
        mode = 1 if self.lossless else (2 if self.transform is not None else 0)
        t = dict(tps_id=0, track_kind=1 if self.ids else 0, coding_mode=mode,
                 source_dtype=reconstruction.DTYPE_CODES[self.src], num_channels=self.d,
                 num_coded=self.dc)
        if mode == 2:
            t["transform_id"] = 0
        if self.lossless:
            t["output_dtype"] = t["source_dtype"]
        else:
            t["output_dtype"] = reconstruction.DTYPE_CODES[o.output_dtype or self.src]
        if self.ids:
            vmax = max((int(a.max()) for a in arrs if a.size), default=0)
            t["vocab_size"] = o.vocab_size or vmax + 1
            if t["vocab_size"] > levels.LEVELS[30].max_vocab:
                raise TKBEncodeError(f"token id {vmax} needs a vocabulary beyond 2^31")
            if vmax >= t["vocab_size"]:
                raise TKBEncodeError(f"token id {vmax} >= vocab_size {t['vocab_size']}")
        if o.grid:
            h, w = o.grid
            if o.prefix_tokens + h * w != n:
                raise TKBEncodeError(f"grid {h}x{w} + {o.prefix_tokens} prefix tokens != {n} "
                                     "tokens per frame")
            t.update(grid_present=1, grid_height=h, grid_width=w,
                     num_prefix_tokens=o.prefix_tokens, max_tokens=n)
        else:
            t.update(grid_present=0, num_prefix_tokens=0,
                     max_tokens=max(o.max_tokens or 0, max(a.shape[0] for a in arrs)))
        return t

    def _positions(self, a: np.ndarray) -> np.ndarray:
        o = self.opts
        if not o.prunes:
            return np.arange(a.shape[0], dtype=np.uint32)
        if self.ids:
            raise TKBEncodeError("pruning applies to embedding tracks")
        t = self.tps
        grid = (t["grid_height"], t["grid_width"]) if t["grid_present"] else None
        return pruning.prune(float_view(a, self.src), o.keep, t["num_prefix_tokens"],
                             o.prune, grid, o.keep_coverage)

    def _prob_bits(self, alphabet: int) -> int:
        """The option, if given and large enough for the alphabet, else Annex B.3's."""
        pb = self.opts.prob_bits
        if pb is None:
            return choose_prob_bits(alphabet)
        if alphabet > 1 << pb:
            raise TKBEncodeError(f"prob_bits {pb} gives {1 << pb} slots, fewer than the "
                                 f"{alphabet} symbols of the alphabet")
        return pb

    def _set_tables(self, tmap, freqs) -> None:
        self.tps["num_tables"] = len(freqs)
        if tmap is not None:
            self.tps["table_map"] = tmap.astype(np.uint8)
        self.tps["freq_table"] = [dict(alphabet_size=f.size, freq_k=k, freq=f.tolist())
                                  for f, k in zip(freqs, tables.best_freq_ks(freqs))]
        self.freqs = freqs

    def _finish_tps(self) -> None:
        o = self.opts
        n_sym = max((p.size for p in self.positions), default=0) * self.dc
        # about 2048 symbols per lane: each lane's final state costs ~16-20 bits, which
        # is ~0.5 % of ~2 bits x 2048 symbols (Annex B.5); fewer steps decode faster
        lanes = o.num_lanes if o.exact_lanes else max(1, min(o.num_lanes, n_sym // 2048 or 1))
        lanes = min(lanes, self.level.max_lanes)
        steps = o.lane_steps or max(1, min(2048, -(-n_sym // lanes)))
        steps = max(1, min(steps, self.level.max_chunk // lanes, self.level.max_lane_steps))
        self.tps.update(num_lanes=lanes, lane_steps=steps)
        self._write_tps()
        alph = max(f.size for f in self.freqs)
        self.freq_all, self.cum_all = tables.encode_arrays(self.freqs, alph)
        tmap = self.tps.get("table_map")
        self.chan_table = (np.zeros(self.dc, dtype=np.int64) if tmap is None
                           else tmap.astype(np.int64))
        self.chan_esc = np.array([f.size for f in self.freqs])[self.chan_table] - 1

    def _write_tps(self) -> None:
        w = BitWriter()
        syntax.write(w, "track_parameter_set", {**self.tps, "num_coded": self.dc})
        self.tps_payload = w.getvalue()

    def set_transform_id(self, transform_id: int) -> None:
        """Name the stream's transform unit that carries this track's transform."""
        self.tps["transform_id"] = transform_id
        self._write_tps()

    # frames
    def _fitted_frame(self, a, pos):
        """The fit's (token_step_delta, levels) of frame ``a`` if it is one of
        the frames the parameter set was fitted on, with the same kept positions."""
        for i, f in enumerate(self._frames):
            if f is a and np.array_equal(self.positions[i], pos):
                return self._fitted[i]
        return None

    def check_frame(self, a) -> np.ndarray:
        """One input frame as [N, D] (ids: [N, 1]), or TKBEncodeError."""
        a = np.asarray(a)
        if self.ids:
            a = a.reshape(-1, 1)
            if a.size and (int(a.min()) < 0 or int(a.max()) >= self.tps["vocab_size"]):
                raise TKBEncodeError(f"token ids must lie in 0..{self.tps['vocab_size'] - 1}")
        if a.ndim != 2 or a.shape[1] != self.d:
            raise TKBEncodeError(f"frame shape {a.shape} does not match {self.d} channels")
        n = a.shape[0]
        if self.tps["grid_present"] and n != self.tps["max_tokens"]:
            raise TKBEncodeError("frame size differs from the grid")
        if not self.tps["grid_present"] and n > self.tps["max_tokens"]:
            raise TKBEncodeError(f"frame of {n} tokens > max_tokens {self.tps['max_tokens']}")
        return a

    def escape_split(self, u: np.ndarray):
        """(symbols, escape values, escape_bits) of zigzag residuals u [K, D] (7.4.1)."""
        esc = np.broadcast_to(self.chan_esc, u.shape)
        is_esc = u >= esc
        escapes = (u - esc)[is_esc]
        return np.where(is_esc, esc, u).ravel(), escapes, self.escape_bits(escapes)

    @staticmethod
    def escape_bits(escapes: np.ndarray) -> int:
        ebits = int(escapes.max()).bit_length() if escapes.size else 0
        if ebits > symbols.MAX_ESCAPE_BITS:
            raise TKBEncodeError("a residual is too large to escape")
        return ebits

    def encode_frame(self, a, frame_number: int, positions=None) -> bytes:
        """Frame unit payload of one frame (clause 6.4 syntax)."""
        a = self.check_frame(a)
        pos = self._positions(a) if positions is None else np.asarray(positions, np.uint32)
        escapes = tdelta = raw = None
        if self.lossless:
            sym, raw = self._split_symbols(a[pos], self.tps["raw_bits"], pos)
            sym, raw = sym.ravel(), raw.ravel()
        else:
            fitted = self._fitted_frame(a, pos)
            if fitted is not None:
                tdelta, lv = fitted
            else:
                xf = float_view(self.merged(a, pos), self.src)[pos]
                lv, codes, tdelta = self._quantize(
                    self.coded_values(xf), self.qp, token_norms(xf),
                    self.predictor_rows([pos]) if self.closed_loop else None)
            u = symbols.zigzag(prediction.residuals_from_levels(lv, pos, self.tps))
            sym, escapes, _ = self.escape_split(u)
        alph = self.freq_all.shape[1]
        flat = np.tile(self.chan_table * alph, pos.size) + np.minimum(sym, alph - 1)
        f_sym = self.freq_all.ravel()[flat]
        if np.any(f_sym == 0) or (sym.size and int(sym.max()) >= alph):
            raise TKBEncodeError(SYMBOL_NOT_IN_TABLE)
        words, cw = rans.encode(sym, f_sym, self.cum_all.ravel()[flat],
                                self.tps["num_lanes"], self.tps["lane_steps"],
                                self.tps["prob_bits"])
        return self.frame_payload(frame_number, a.shape[0], pos, words, cw, tdelta=tdelta,
                                  escapes=escapes, raw=raw, stand_ins=self.stand_ins(a, pos))

    def merged(self, a: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Frame ``a`` as coded (B.2): with the option ``merge_tokens``, on a frame that
        keeps some tokens and prunes others, a copy in which each kept token is the mean
        of itself and the pruned tokens it stands in for (``pruning.merge_average`` over
        the stand-ins of ``pruning.assign_stand_ins``), rounded to the source type to
        nearest even; otherwise ``a`` itself."""
        if not self.opts.merge_tokens or not 0 < len(pos) < a.shape[0]:
            return a
        xf = float_view(a, self.src)
        pos = np.asarray(pos)
        mv = pruning.merge_average(xf, pos, pruning.assign_stand_ins(xf, pos))
        out = a.copy()
        out[pos] = reconstruction.to_output(mv.astype(np.float32), DTYPE_CODE[self.src])
        return out

    def stand_ins(self, a, pos) -> np.ndarray | None:
        """The merge map of frame ``a`` with kept positions ``pos`` (clauses 6.4, 7.8):
        with the option ``merge_map``, on a frame that keeps some tokens and prunes
        others, each pruned token's most similar kept token
        (``pruning.assign_stand_ins``); otherwise None (no map)."""
        n = np.asarray(a).shape[0]
        if not self.opts.merge_map or self.ids or not 0 < len(pos) < n:
            return None
        from .pruning import assign_stand_ins
        return assign_stand_ins(float_view(np.asarray(a), self.src), np.asarray(pos))

    def frame_payload(self, frame_number: int, n: int, pos: np.ndarray, words, cw,
                      tdelta=None, escapes=None, raw=None, stand_ins=None) -> bytes:
        """Write a frame unit payload (clause 6.4) from its coded parts: rANS words and
        chunk_words, and token_step_delta and escape values (quantized tracks) or raw
        values (split tracks); ``stand_ins``: a merge map (clause 7.8), or None."""
        presence = int(pos.size != n)
        if stand_ins is not None:
            presence = PRESENCE_WITH_MERGE_MAP
            self.merge_maps += 1
        v = dict(tps_id=self.tps["tps_id"], random_access=1, frame_number=frame_number,
                 num_tokens=n, presence_present=presence, chunk_words=cw,
                 num_kept=pos.size, num_chunks=len(cw))
        ebits = 0
        if not self.lossless:
            ebits = self.escape_bits(escapes)
            v.update(frame_step_delta=0, token_scale_present=int(bool(self.opts.token_scale)),
                     token_step_delta=np.asarray(tdelta).astype(np.int8), escape_bits=ebits,
                     num_escapes=int(escapes.size))
        w = BitWriter()

        def presence_map(wr, env):
            write_presence_map(wr, self.tps, n, pos)

        def rans_data(wr, env):
            wr.array("u16", words)

        def escape_data(wr, env):
            wr.packed(escapes, ebits)
            wr.align_zero()

        def raw_data(wr, env):
            wr.packed(raw, self.tps["raw_bits"])
            wr.align_zero()

        def merge_map(wr, env):
            write_merge_map(wr, pos.size, stand_ins)

        ctx = dict(coding_mode=self.tps["coding_mode"])
        syntax.write(w, "frame", v, ctx, dict(presence_map=presence_map, rans_data=rans_data,
                                              escape_data=escape_data, raw_data=raw_data,
                                              merge_map=merge_map))
        return w.getvalue()


# -- whole streams ------------------------------------------------------------------

def _as_frames(array, bf16: bool = False) -> tuple[list, bool]:
    """Split an input array into frames: [N, D] / [F, N, D] floats, [N] / [F, N] ids.
    ``bf16``: the (uint16) array holds bfloat16 bit patterns."""
    a = array
    if hasattr(a, "detach"):  # torch tensor
        from .io import torch_to_numpy
        a, name = torch_to_numpy(a)
        bf16 = bf16 or name == "bfloat16"
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":  # ml_dtypes arrays: keep the bit patterns
        a = a.view(np.uint16)
        bf16 = True
    ids = a.dtype.kind in "iu" and not bf16
    if ids:
        if a.ndim not in (1, 2):
            raise TKBEncodeError(f"token ids must be [N] or [F, N], got shape {a.shape}")
        if a.size and int(a.min()) < 0:
            raise TKBEncodeError("token ids must be non-negative")
        return ([a] if a.ndim == 1 else list(a)), True
    if a.ndim not in (2, 3):
        raise TKBEncodeError(f"embeddings must be [N, D] or [F, N, D], got shape {a.shape}")
    return ([a] if a.ndim == 2 else list(a)), False


def _resolve_transform(spec):
    """A Transform from the ``transform`` option (None, a Transform, a .tkbt path or its
    bytes); "auto" is resolved by :func:`encode_tracks` before a TrackEncoder sees it."""
    if spec is None or isinstance(spec, tr.Transform):
        return spec
    if isinstance(spec, str) and spec == "auto":
        raise TKBEncodeError("transform='auto' is chosen per stream by encode_tracks")
    from . import tkbt
    try:
        return tkbt.load(spec)
    except OSError as e:
        raise TKBEncodeError(f"cannot read the transform {spec}: {e}") from None
    except TKBError as e:
        raise TKBEncodeError(f"{spec} is not a valid transform: {e.message}") from None


AUTO_ENERGIES = (0.99, 0.995, 0.999, 0.9999)   # candidate stream-fitted transforms (B.7)


def _auto_transform(frames: list, opts: TrackOptions, level_idc) -> tr.Transform | None:
    """transform='auto' (Annex B.7): PCA transforms fitted on the track's own frames,
    carried inline, against no transform; the smallest single-track stream wins."""
    base = replace(opts, transform=None, embed_transform=False)
    best = (len(encode_tracks([(frames, base)], level_idc=level_idc, index=False)), None)
    views = [float_view(f, opts.source_dtype or source_dtype(f)) for f in frames]
    tried = set()
    for e in AUTO_ENERGIES:
        try:
            t = transform_fit.fit_transform(views, energy=e)
        except TKBEncodeError:
            return None
        if t.digest in tried:
            continue
        tried.add(t.digest)
        cand = replace(opts, transform=t, embed_transform=True)
        try:
            size = len(encode_tracks([(frames, cand)], level_idc=level_idc, index=False))
        except TKBEncodeError:      # e.g. the target is out of reach with K coefficients
            continue
        if size < best[0]:
            best = (size, t)
    return best[1]


def _prepare(arr, opts) -> tuple[list, TrackOptions, bool]:
    """Input frames of one track and a copy of its options, bfloat16 tagged (a torch
    bfloat16 tensor or ml_dtypes array arrives as uint16 bit patterns)."""
    opts = replace(opts) if isinstance(opts, TrackOptions) else TrackOptions(**(opts or {}))
    frames, ids = _as_frames(arr, opts.source_dtype == "bfloat16")
    if not frames:
        raise TKBEncodeError("no frames to encode")
    if not ids and frames[0].dtype == np.uint16:
        opts.source_dtype = "bfloat16"
    return _checked(frames, opts), opts, ids


def _checked(frames: list, opts: TrackOptions) -> list:
    """float64 -> float32 for lossy coding; lossy coding needs finite values."""
    if frames and frames[0].dtype == np.float64:
        if opts.lossless:
            raise TKBEncodeError("TKB has no float64 dtype: lossless coding of float64 "
                                 "input is impossible (convert to float32 first)")
        frames = [f.astype(np.float32) for f in frames]
    if not opts.lossless:
        for f in frames:
            if f.dtype.kind == "f" and not _all_finite(f):
                raise TKBEncodeError("lossy coding needs finite values (use lossless)")
    return frames


def _all_finite(f: np.ndarray) -> bool:
    """np.all(np.isfinite(f)); binary16 values by their exponent field (all ones: an
    infinity or a NaN), a quarter of the time."""
    if f.dtype == np.float16 and f.size:
        return int((np.ascontiguousarray(f).view(np.uint16) & 0x7C00).max()) != 0x7C00
    return bool(np.all(np.isfinite(f)))


def encode_tracks(tracks: list, meta: dict | None = None, level_idc: int | None = None,
                  index: bool = True, progress=None, frame_coder=None,
                  kernels: FitKernels | None = None) -> bytes:
    """Encode several tracks into one stream.

    ``tracks``: list of (array, TrackOptions or dict).  Returns the stream bytes.
    ``frame_coder(track_encoder, frames)``: codes a track's frames into frame unit
    payloads instead of ``TrackEncoder.encode_frame`` (the GPU path passes one).
    ``kernels``: the fit's numeric steps (:class:`FitKernels`; default numpy's).
    """
    prepared = [_prepare(arr, opts) for arr, opts in tracks]
    for frames, opts, ids in prepared:
        if isinstance(opts.transform, str) and opts.transform == "auto":
            opts.transform = None if opts.lossless or ids else \
                _auto_transform(frames, opts, level_idc)
            opts.embed_transform = True
        elif not (opts.lossless or ids):
            opts.transform = _resolve_transform(opts.transform)
    lossless_only = all(o.lossless or ids for _, o, ids in prepared)
    meta_payloads = [metadata_payload(meta)] if meta else []
    probe = levels.LEVELS[30] if level_idc is None else levels.get_level(level_idc)
    encs = []
    for frames, opts, ids in prepared:
        encs.append((TrackEncoder(frames, opts, probe, kernels=kernels), frames))
        if opts.meta:
            meta_payloads.append(metadata_payload(opts.meta))
    transform_units = _transform_units([te for te, _ in encs])
    payloads = []
    total = sum(len(f) for _, f in encs)
    done = 0
    for tid, (te, frames) in enumerate(encs):
        fr = []
        if frame_coder is not None:
            fr = frame_coder(te, frames)
            done += len(frames)
            if progress:
                progress(done, total)
        for i, f in enumerate([] if frame_coder is not None else frames):
            fr.append(te.encode_frame(f, i, te.positions[i]))
            done += 1
            if progress:
                progress(done, total)
        payloads.append(fr)
    # High for a transform or a merge map (a frame that carries one), B.8
    profile = (levels.PROFILE_HIGH if transform_units or any(te.merge_maps for te, _ in encs)
               else levels.PROFILE_LOSSLESS if lossless_only else levels.PROFILE_MAIN)
    max_unit = max([len(p) for fr in payloads for p in fr] + [len(p) for p in meta_payloads]
                   + [len(te.tps_payload) for te, _ in encs] + [len(p) for p in transform_units]
                   + [4 + 12 * sum(len(fr) for fr in payloads)])   # the largest unit
    needed = levels.smallest_level(
            tokens=max(te.tps["max_tokens"] for te, _ in encs),
            channels=max(te.d for te, _ in encs),
            values=max(te.tps["max_tokens"] * te.d for te, _ in encs),
            vocab=max(te.tps.get("vocab_size", 0) for te, _ in encs),
            tables=max(te.tps["num_tables"] for te, _ in encs),
            lanes=max(te.tps["num_lanes"] for te, _ in encs),
            chunk=max(te.tps["num_lanes"] * te.tps["lane_steps"] for te, _ in encs),
            lane_steps=max(te.tps["lane_steps"] for te, _ in encs),
            unit_size=max_unit, tracks=len(encs))
    if level_idc is None:
        level_idc = needed
    elif needed > level_idc:
        raise TKBEncodeError(f"the stream needs level {needed}; level {level_idc} was asked for")
    crc = (kernels or NUMPY_KERNELS).crc32c      # the units' CRC-32C (clause 3.4)
    out = bytearray(stream_header(profile, level_idc))
    if meta:
        out += unit(UNIT_METADATA, STREAM_TRACK, metadata_payload(meta), crc=crc)
    for p in transform_units:
        out += unit(UNIT_TRANSFORM, STREAM_TRACK, p, crc=crc)
    entries = {}
    for tid, (te, _) in enumerate(encs):
        out += unit(UNIT_TPS, tid, te.tps_payload, crc=crc)
        if te.opts.meta:
            out += unit(UNIT_METADATA, tid, metadata_payload(te.opts.meta), crc=crc)
    # frames interleaved by frame number across tracks
    longest = max(len(p) for p in payloads)
    for i in range(longest):
        for tid, fr in enumerate(payloads):
            if i < len(fr):
                entries.setdefault(tid, []).append((i, len(out)))
                out += unit(UNIT_FRAME, tid, fr[i], crc=crc)
    if index:
        for tid, e in entries.items():
            out += unit(UNIT_INDEX, tid, index_payload(e), crc=crc)
    return bytes(out)


def _transform_units(encs: list) -> list:
    """Transform unit payloads of the tracks' transforms, one per distinct transform
    (inline when any track asks for it), each track's parameter set naming its own."""
    ids, inline = {}, {}
    for te in encs:
        if te.transform is not None:
            key = te.transform.digest
            ids.setdefault(key, (len(ids), te.transform))
            inline[key] = inline.get(key, False) or te.opts.embed_transform
            te.set_transform_id(ids[key][0])
    return [tr.transform_unit_payload(i, t, inline[key]) for key, (i, t) in ids.items()]


def encode(array, *, meta: dict | None = None, level_idc: int | None = None,
           index: bool = True, progress=None, frame_coder=None, **options) -> bytes:
    """Encode one track (see :class:`TrackOptions` for ``options``)."""
    return encode_tracks([(array, TrackOptions(**options))], meta=meta, level_idc=level_idc,
                         index=index, progress=progress, frame_coder=frame_coder)


class StreamWriter:
    """Streaming encoder: frames are written to a binary file object as they come.

    Each track's parameter set is fitted on calibration frames given to
    :meth:`add_track` (typically the first frames) with every symbol of the
    alphabet codable, so later frames with other statistics still encode (a
    value beyond a quantized track's alphabet takes the escape code).  Add all
    tracks before the first :meth:`write`; :meth:`close` writes the index.
    """

    def __init__(self, f, level_idc: int = 20, meta: dict | None = None, index: bool = True):
        self.f = f
        self.level = levels.get_level(level_idc)
        self.level_idc = level_idc
        self.meta = meta
        self.index = index
        self.tracks: list[TrackEncoder] = []
        self.counts: list[int] = []
        self.entries: dict = {}
        self.offset = 0
        self.started = False

    def add_track(self, calibration, **options) -> int:
        """Fit a track on ``calibration`` ([N, D], [F, N, D] or ids); returns its track_id."""
        if self.started:
            raise TKBEncodeError("add every track before the first frame is written")
        frames, opts, _ = _prepare(calibration, TrackOptions(**options))
        if opts.max_tokens is None and not opts.grid:  # later frames may be longer
            d = 1 if frames[0].ndim == 1 else frames[0].shape[1]
            opts.max_tokens = min(self.level.max_tokens, self.level.max_values // d)
        if isinstance(opts.transform, str) and opts.transform == "auto":
            opts.transform = _auto_transform(frames, opts, self.level_idc)
            opts.embed_transform = True
        te = TrackEncoder(frames, opts, self.level, pseudo=True)
        # the stream's level must admit the track (checked as a decoder would)
        from .decoder import parse_tps
        try:
            known = {0: te.transform} if te.transform is not None else {}
            parse_tps(te.tps_payload, self.level, levels.PROFILE_HIGH, transforms=known)
            levels.check_limit(len(self.tracks) + 1, self.level.max_tracks,
                               "number of tracks", self.level)
        except TKBError as e:
            raise TKBEncodeError(f"the track does not fit level {self.level_idc}: "
                                 f"{e.message}") from None
        self.tracks.append(te)
        self.counts.append(0)
        return len(self.tracks) - 1

    def _emit(self, b: bytes) -> None:
        self.f.write(b)
        self.offset += len(b)

    def _start(self) -> None:
        lossless = all(t.lossless for t in self.tracks)
        units = _transform_units(self.tracks)
        merge = any(t.opts.merge_map for t in self.tracks)     # frames may carry merge maps
        profile = (levels.PROFILE_HIGH if units or merge else
                   levels.PROFILE_LOSSLESS if lossless else levels.PROFILE_MAIN)
        self._emit(stream_header(profile, self.level_idc))
        if self.meta:
            self._emit(unit(UNIT_METADATA, STREAM_TRACK, metadata_payload(self.meta)))
        for p in units:
            self._emit(unit(UNIT_TRANSFORM, STREAM_TRACK, p))
        for tid, t in enumerate(self.tracks):
            self._emit(unit(UNIT_TPS, tid, t.tps_payload))
            if t.opts.meta:
                self._emit(unit(UNIT_METADATA, tid, metadata_payload(t.opts.meta)))
        self.started = True

    def write(self, track_id: int, frame, frame_number: int | None = None) -> None:
        """Encode and write one frame ([N, D] / ids [N]) or several ([F, N, D] / [F, N]).
        Nothing is written unless every frame encodes."""
        if not 0 <= track_id < len(self.tracks):
            raise TKBEncodeError(f"no track {track_id}: call add_track first")
        te = self.tracks[track_id]
        frames, _ = _as_frames(frame, te.src == "bfloat16")
        payloads = []
        for i, a in enumerate(_checked(frames, te.opts)):
            number = self.counts[track_id] + i if frame_number is None else frame_number + i
            payload = te.encode_frame(a, number)
            if len(payload) > self.level.max_unit_size:
                raise TKBEncodeError(f"a frame of {len(payload)} bytes exceeds the unit size "
                                     f"of level {self.level_idc}")
            payloads.append((number, payload))
        if not self.started:
            self._start()
        for number, payload in payloads:
            self.entries.setdefault(track_id, []).append((number, self.offset))
            self._emit(unit(UNIT_FRAME, track_id, payload))
            self.counts[track_id] += 1

    def close(self) -> None:
        if not self.started:
            self._start()
        if self.index:
            for tid, e in self.entries.items():
                self._emit(unit(UNIT_INDEX, tid, index_payload(e)))
        self.index = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
