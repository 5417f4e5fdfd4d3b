"""Interleaved rANS on the GPU (spec clause 7.3): every chunk of a batch of frames
coded in parallel, the lanes of a chunk in lockstep.

Twin of ``tokenbits.rans`` (the numpy reference): same state, same words, same
order.  One program codes G chunks; its block is [G, BLOCK_L] (chunks x lanes).

Decoding (clause 7.3.2): each step looks up one packed slot entry (32-bit:
(freq - 1) | bias << 12 | symbol << 24, or 64-bit), updates the state, and the
lanes that fall below RANS_L read their words at ptr + (the number of lanes
below them that read one): a vote of the lanes' bits and popcounts for chunks of
at most 32 lanes (BITS), a cumsum otherwise.  Escape symbols (clause 7.4.1) are
counted per frame and their positions recorded, so the escape values can be
matched without another pass over the symbols.  Where the 32-bit tables of a
parameter set fit SMEM_ENTRIES (32 KiB) and chunks have 32 lanes, a compiled
kernel (SMEM) copies them once per program into shared memory and decodes
SMEM_G chunks per program, a warp each, with the table reads and the escape
recording in inline PTX (Triton has no gather from shared memory): same
outputs, tested against the global-memory path.  Where the slot tables do not fit
but their two-level form does (a byte of each slot's symbol, then each symbol's
frequency and start: SYMBYTES), SMEM2 keeps the symbol tables and channel links in
the static shared arrays and, with SYMSMEM, the slot bytes in the launch's dynamic
shared memory (:func:`_with_dynamic_shared`), one program of 32 warps a
multiprocessor.  The global-memory path reads the 64-bit or one-level entries
through two register windows that slide ahead of the reading (RING).

Encoding (Annex B, informative): steps last to first, x // freq by a reciprocal
multiply (RCP).  With DENSE (the default) each step's renormalisation words are
placed at once in the decoder's reading order (step, then lane), packed at the
end of the chunk's worst-case region, and a copy kernel writes each chunk's
initial states and words at offsets from a prefix sum of the per-chunk word
counts; otherwise every step writes one int32 slot per lane and a compaction
kernel drops the empty ones.  The default coding kernel (REL, where the channel
links fit) keeps its offsets relative to the chunk in int32, steps through the
channels by links and loads the symbols SDEPTH steps ahead.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

RANS_L = tl.constexpr(1 << 16)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# status bits of a decoded chunk (reported as TKBEntropyError, clause 7.3.2)
BAD_INITIAL_STATE = tl.constexpr(1)
BAD_WORD_COUNT = tl.constexpr(2)
BAD_FINAL_STATE = tl.constexpr(4)
# status bit of an encoded chunk: a symbol without frequency in its table
BAD_SYMBOL = tl.constexpr(1)


@triton.jit
def _word(words_ptr, idx, mask):
    """Word idx of the stream as uint32 (words are stored as int16)."""
    w = tl.load(words_ptr + idx, mask=mask, other=0)
    return (w.to(tl.int32) & 0xFFFF).to(tl.uint32)


@triton.jit
def _popc(v):
    """Set bits of each uint32 element, as int32 (bit halving: on the H200 this ran as
    fast as the popc instruction through inline assembly, and it runs in the
    interpreter)."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _lane_scan(need, below, BITS: tl.constexpr):
    """Exclusive prefix count of ``need`` [G, L] along the lanes, and its row total
    [G, 1]: the word order of clause 7.3.2 (lanes that renormalise, in lane order).
    BITS (at most 32 lanes): one warp-wide xor of distinct lane bits (a vote) and two
    popcounts with ``below`` = the bits of the lanes below each lane; else a scan."""
    if BITS:   # (below + 1 is each lane's own bit: one select a lane)
        bits = tl.xor_sum(tl.where(need, below + 1, 0), 1)[:, None]
        return _popc(bits & below), _popc(bits)
    else:
        ni = need.to(tl.int32)
        return tl.cumsum(ni, 1) - ni, tl.sum(ni, 1)[:, None]


# the static shared array of the SMEM decode path: 32-bit slot entries of all tables
SMEM_ENTRIES = tl.constexpr(8192)
_SMEM_DECL = tl.constexpr(f".shared .align 16 .b32 tkb_slot_table[{SMEM_ENTRIES.value}];\n\t"
                          "mov.u32 $0, tkb_slot_table;")
# and the channel links (LINKS): per channel, the next step's channel | its table's
# offset << 11 | its ESC << 24, for at most LINK_ENTRIES channels
LINK_ENTRIES = tl.constexpr(2048)
_LINK_DECL = tl.constexpr(f".shared .align 16 .b32 tkb_chan_links[{LINK_ENTRIES.value}];\n\t"
                          "mov.u32 $0, tkb_chan_links;")
_SMEM_FILL = tl.constexpr(1024)


# shared-memory primitives in inline PTX (Triton has no gather from shared memory);
# also used by the reconstruction's SMEM_STEP path
@triton.jit
def smem_declare(DECL: tl.constexpr):
    """The shared address of the array DECL declares (once per kernel), or of Triton's
    dynamic array (:data:`_DYN_BASE`)."""
    return tl.inline_asm_elementwise(DECL, "=r,r", [tl.program_id(0)], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def smem_store(addr, v):
    """int32 ``v`` to shared addresses ``addr``."""
    tl.inline_asm_elementwise("st.shared.b32 [$1], $2;\n\tmov.u32 $0, 0;", "=r,r,r",
                              [addr, v], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def smem_sync(x):
    """A barrier after the stores; returns 0, to be added to the addresses read later so
    that every read depends on the barrier."""
    return tl.inline_asm_elementwise("bar.sync 0;\n\tmov.u32 $0, 0;", "=r,r", [x],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _smem_fill(base, src_ptr, n):
    """Copy ``n`` int32 words of ``src_ptr`` to the shared address ``base``, wait for
    the copy, and return ``base`` (made to depend on the barrier)."""
    ar = tl.arange(0, _SMEM_FILL)
    for i in range(0, n, _SMEM_FILL):
        smem_store(base + 4 * (i + ar), tl.load(src_ptr + i + ar, mask=i + ar < n, other=0))
    return base + smem_sync(base)


@triton.jit
def _smem_table(table_ptr, DECL: tl.constexpr, N: tl.constexpr):
    """Declare the static shared array DECL, copy N int32 entries of ``table_ptr`` into
    it, wait for the copy, and return the array's shared-window address."""
    return _smem_fill(smem_declare(DECL), table_ptr, N)


# the dynamic shared memory of the SMEM2 path's slot bytes (SYMSMEM): Triton's own
# dynamic array, past the DYN_RESERVE bytes Triton may use itself; the launch asks for
# DYN_RESERVE + the table's bytes (:func:`_with_dynamic_shared`)
DYN_RESERVE = tl.constexpr(4096)
_DYN_BASE = tl.constexpr(f"mov.u32 $0, global_smem;\n\tadd.u32 $0, $0, {DYN_RESERVE.value};")


@triton.jit
def _smem_bytes(src_ptr, n):
    """Copy ``n`` int32 words of ``src_ptr`` into the dynamic shared array past
    DYN_RESERVE, wait for the copy, and return its shared-window address."""
    return _smem_fill(smem_declare(_DYN_BASE), src_ptr, n)


@triton.jit
def _smem_byte(addr):
    """Unsigned bytes at shared addresses ``addr``, as int32."""
    return tl.inline_asm_elementwise("ld.shared.u8 $0, [$1];", "=r,r", [addr],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _smem_entry(base, idx):
    """Entries ``idx`` of the shared slot table at ``base``."""
    return tl.inline_asm_elementwise("ld.shared.u32 $0, [$1];", "=r,r", [base + 4 * idx],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _flat(v, G: tl.constexpr, BLOCK_L: tl.constexpr):
    """A [G, BLOCK_L] block as one row.  Gathers and atomics take their pointers flat:
    a 2-D pointer block with no known contiguity gets a chunk-major layout from Triton's
    coalescing (as of 3.6), and converting to it and back costs a trip through shared
    memory, with barriers, every step once a program holds several chunks."""
    return tl.reshape(v, [G * BLOCK_L])


@triton.jit
def _gather(ptrs, mask, G: tl.constexpr, BLOCK_L: tl.constexpr):
    """Masked load of a [G, BLOCK_L] block of scattered pointers (0 where masked)."""
    v = tl.load(_flat(ptrs, G, BLOCK_L), mask=_flat(mask, G, BLOCK_L), other=0)
    return tl.reshape(v, [G, BLOCK_L])


@triton.jit
def _record_escapes(esc_count_ptr, esc_pos_ptr, frame, ebase, ecap, sidx, is_esc, lane,
                    G: tl.constexpr, BLOCK_L: tl.constexpr):
    """Append the positions (keys 2 * index) of this step's escape symbols to their
    frames' lists (in any order: the caller sorts)."""
    m = _flat(is_esc, G, BLOCK_L)
    k = tl.atomic_add(_flat(esc_count_ptr + frame + 0 * lane, G, BLOCK_L),
                      _flat(1 + 0 * lane + 0 * frame, G, BLOCK_L), mask=m, sem="relaxed")
    tl.store(_flat(esc_pos_ptr + ebase + 0 * lane, G, BLOCK_L) + k,
             _flat(2 * sidx, G, BLOCK_L), mask=m & (k < _flat(ecap + 0 * lane, G, BLOCK_L)))


@triton.jit
def _prefetch(ptrs, mask):
    """Bring the lines at ``ptrs`` (where ``mask``) into the L1 cache ahead of their
    loads (``prefetch.global.L1``; inline PTX, compiled kernels only).  A hint: it
    changes no value.  A value loaded several steps ahead into a register does not do
    this: the register copy at the loop's back edge waits for the load (BENCHMARKS.md,
    "Profiles")."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L1 [$1]; mov.u32 $0, 0; }",
        "=r,l,r", [ptrs.to(tl.int64), mask.to(tl.int32)], dtype=tl.int32, is_pure=False,
        pack=1)


# appends this step's escape positions (keys: byte offsets of the symbols in the
# output, 2 * index) where a lane of the warp decoded an escape: a vote, then a branch
# the warp takes together, then an atomic slot (ptxas aggregates it per warp) and a store
_ESC_PTX = tl.constexpr(
    "{ .reg .pred p, q; .reg .u32 k; .reg .u64 kk, a, v;\n\t"
    "mov.u32 $0, 0;\n\t"
    "setp.ne.s32 p, $1, 0;\n\t"
    "vote.sync.any.pred q, p, -1;\n\t"
    "@!q bra.uni TKB_NO_ESC${:uid};\n\t"
    "@p atom.global.add.u32 k, [$2], 1;\n\t"
    "cvt.u64.u32 kk, k;\n\t"
    "setp.lt.u64 q, kk, $4;\n\t"
    "and.pred q, q, p;\n\t"
    "sub.s64 v, $5, $6;\n\t"
    "@q mad.wide.u32 a, k, 8, $3;\n\t"
    "@q st.global.u64 [a], v;\n"
    "TKB_NO_ESC${:uid}:\n\t}")


@triton.jit
def _record_escapes_ptx(is_esc, cnt_addr, pos_addr, cap, sym_addr, out_addr):
    """:func:`_record_escapes` in inline PTX, for the SMEM path (one warp per chunk):
    count at cnt_addr, slots from pos_addr (cap of them), keys sym_addr - out_addr."""
    return tl.inline_asm_elementwise(_ESC_PTX, "=r,r,l,l,l,l,l",
                                     [is_esc.to(tl.int32), cnt_addr, pos_addr, cap, sym_addr,
                                      out_addr], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit(do_not_specialize=["prob_bits"])   # prob_bits 1 must stay a tensor
def _decode_kernel(words_ptr, c_word0_ptr, c_word1_ptr, c_nsym_ptr, c_out_ptr, c_chan_ptr,
                   c_frame_ptr, table_ptr, sym_ptr, chan_base_ptr, out_ptr, status_ptr,
                   esc_count_ptr, esc_base_ptr, esc_cap_ptr, esc_pos_ptr,
                   num_chunks, num_lanes, lane_inc, num_channels, prob_bits, num_groups,
                   sym_stride, sym_words,
                   G: tl.constexpr, BLOCK_L: tl.constexpr, WINDOW: tl.constexpr,
                   ESC_BRANCH: tl.constexpr, PACK32: tl.constexpr, BITS: tl.constexpr,
                   POSITIONS: tl.constexpr, SMEM: tl.constexpr, LINKS: tl.constexpr,
                   RING: tl.constexpr, SYMBYTES: tl.constexpr, PADDED: tl.constexpr = False,
                   SYMSMEM: tl.constexpr = False):
    """Each program decodes the groups of G chunks pid, pid + programs, ...
    POSITIONS: record each escape symbol's position (the batch declares escapes);
    otherwise escapes are only counted, per lane in registers, since any is an error.
    SMEM: the slot table (PACK32, at most SMEM_ENTRIES entries) is read from a copy in
    shared memory, once per program (compiled kernels only).  LINKS (with SMEM):
    ``chan_base_ptr`` holds the channel links (DecodeTables.links), also copied to
    shared memory; a step reads its channel's table offset and ESC and the next
    step's channel in one entry.  RING (with WINDOW): the words are read through two
    windows of BLOCK_L words kept in registers, the next one loaded as soon as the
    reading enters the second, instead of a window loaded at each step's position.
    PADDED (WINDOW without RING): ``words_ptr``'s buffer holds at least BLOCK_L more
    words past the last chunk's (:func:`padded_words`), so the window loads without a
    mask, from at most nw + BLOCK_L - 1 words past the chunk start.
    SYMBYTES (PACK32): a slot's symbol comes from the byte table ``sym_ptr``
    (DecodeTables.sym_bytes), then its frequency and start from ``table_ptr`` =
    DecodeTables.sym_entries (``sym_stride`` entries a table): two small reads the L1
    cache holds, where the slot entries of large tables miss it.  With SMEM and LINKS
    (SMEM2) the symbol table is the shared copy (DecodeTables.sym_smem) and the links
    carry table indices; SYMSMEM: the ``sym_words`` words of slot bytes are copied to
    dynamic shared memory, which the launch must provide (:func:`_with_dynamic_shared`)."""
    sbase = 0
    lbase = 0
    dbase = 0
    if SMEM:
        sbase = _smem_table(table_ptr, _SMEM_DECL, SMEM_ENTRIES)
        if LINKS:
            lbase = _smem_table(chan_base_ptr, _LINK_DECL, LINK_ENTRIES)
        if SYMSMEM:
            dbase = _smem_bytes(sym_ptr.to(tl.pointer_type(tl.int32), bitcast=True), sym_words)
    for grp in range(tl.program_id(0), num_groups, tl.num_programs(0)):
        _decode_group(grp, words_ptr, c_word0_ptr, c_word1_ptr, c_nsym_ptr, c_out_ptr,
                      c_chan_ptr, c_frame_ptr, table_ptr, sym_ptr, chan_base_ptr, out_ptr,
                      status_ptr, esc_count_ptr, esc_base_ptr, esc_cap_ptr, esc_pos_ptr,
                      num_chunks, num_lanes, lane_inc, num_channels, prob_bits, sym_stride,
                      sbase, lbase, dbase, G, BLOCK_L, WINDOW, ESC_BRANCH, PACK32, BITS,
                      POSITIONS, SMEM, LINKS, RING, SYMBYTES, PADDED, SYMSMEM)


@triton.jit
def _decode_group(grp, words_ptr, c_word0_ptr, c_word1_ptr, c_nsym_ptr, c_out_ptr,
                  c_chan_ptr, c_frame_ptr, table_ptr, sym_ptr, chan_base_ptr, out_ptr,
                  status_ptr, esc_count_ptr, esc_base_ptr, esc_cap_ptr, esc_pos_ptr,
                  num_chunks, num_lanes, lane_inc, num_channels, prob_bits, sym_stride,
                  sbase, lbase, dbase, G: tl.constexpr, BLOCK_L: tl.constexpr,
                  WINDOW: tl.constexpr,
                  ESC_BRANCH: tl.constexpr, PACK32: tl.constexpr, BITS: tl.constexpr,
                  POSITIONS: tl.constexpr, SMEM: tl.constexpr, LINKS: tl.constexpr,
                  RING: tl.constexpr, SYMBYTES: tl.constexpr, PADDED: tl.constexpr,
                  SYMSMEM: tl.constexpr):
    """Decode chunks grp * G ... grp * G + G - 1 (clause 7.3.2)."""
    cid = grp * G + tl.arange(0, G)                                    # [G]
    cok = cid < num_chunks
    lane = tl.arange(0, BLOCK_L)[None, :]                              # [1, L]
    below = (tl.full([1, BLOCK_L], 1, tl.uint32) << lane.to(tl.uint32)) - 1
    w0 = tl.load(c_word0_ptr + cid, mask=cok, other=0)[:, None]        # int64
    w1 = tl.load(c_word1_ptr + cid, mask=cok, other=0)[:, None]
    nsym = tl.load(c_nsym_ptr + cid, mask=cok, other=0)[:, None]       # int32
    out0 = tl.load(c_out_ptr + cid, mask=cok, other=0)[:, None]        # int64
    frame = tl.load(c_frame_ptr + cid, mask=cok, other=0)[:, None]
    ebase = tl.load(esc_base_ptr + frame)
    ecap = tl.load(esc_cap_ptr + frame)
    ch = (tl.load(c_chan_ptr + cid, mask=cok, other=0)[:, None] + lane) % num_channels
    na = tl.minimum(nsym, num_lanes)
    lane_ok = lane < na
    wbase = words_ptr + w0                                             # [G, 1] pointers
    # the chunk's word count and the words read so far, relative to w0 (a chunk holds
    # far fewer than 2^30 words; a larger count cannot be matched and is reported)
    nw = tl.minimum(w1 - w0, 1 << 30).to(tl.int32)
    rel = 2 * na + 0 * lane                                             # [G, L], equal
    # initial states: words the chunk does not have read as 0 (then reported)
    x = _word(wbase, 2 * lane, lane_ok & (2 * lane < nw)) | \
        (_word(wbase, 2 * lane + 1, lane_ok & (2 * lane + 1 < nw)) << 16)
    status = tl.max((lane_ok & (x < RANS_L)).to(tl.int32), 1)[:, None] * BAD_INITIAL_STATE
    pb = prob_bits.to(tl.uint32)
    mask = (tl.full([G, BLOCK_L], 1, tl.uint32) << pb) - 1
    steps = tl.max(tl.max((nsym + num_lanes - 1) // num_lanes, 1), 0)
    if LINKS:
        cb = _smem_entry(lbase, ch)
    else:
        cb = _gather(chan_base_ptr + ch, lane_ok, G, BLOCK_L)
    nesc = tl.zeros([G, BLOCK_L], tl.int32)
    optr = out_ptr + out0 + lane                                       # this step's symbols
    if SMEM:   # escape bookkeeping addresses for the inline PTX
        cnt_addr = (esc_count_ptr + frame + 0 * lane).to(tl.int64)
        pos_addr = (esc_pos_ptr + ebase + 0 * lane).to(tl.int64)
        out_addr = (out_ptr + 0 * lane + 0 * frame).to(tl.int64)
        ecap2 = ecap + 0 * lane
    if WINDOW and RING:   # words wb .. wb + 2 BLOCK_L - 1; rel - wb < BLOCK_L between steps
        wb = rel
        win0 = _word(wbase, wb + lane, wb + lane < nw)
        win1 = _word(wbase, wb + BLOCK_L + lane, wb + BLOCK_L + lane < nw)
    for t in range(0, steps):
        act = lane_ok & (t * num_lanes + lane < nsym)
        if LINKS and SYMBYTES:   # next channel | table index << 11 | ESC << 24
            slot = (x & mask).to(tl.int32)
            tid = (cb >> 11) & 0x1FFF
            if SYMSMEM:
                sy = _smem_byte(dbase + (tid << prob_bits) + slot)
            else:
                sy = tl.reshape(tl.load(_flat(sym_ptr + ((tid << prob_bits) + slot), G,
                                              BLOCK_L)), [G, BLOCK_L]).to(tl.int32)
            fc = _smem_entry(sbase, tid * sym_stride + sy)
            esc_of_lane = (cb >> 24) & 0xFF
        elif LINKS:   # next channel | table offset << 11 | ESC << 24
            e = _smem_entry(sbase, (x & mask).to(tl.int32) + ((cb >> 11) & 0x1FFF))
            esc_of_lane = (cb >> 24) & 0xFF
        elif SMEM:
            e = _smem_entry(sbase, (x & mask).to(tl.int32) + (cb & 0xFFFFF))
            esc_of_lane = cb >> 20
        elif PACK32 and SYMBYTES:   # the slot's symbol, then (freq - 1) | cum << 12
            slot = (x & mask).to(tl.int32)
            toff = cb & 0xFFFFF
            sy = _gather(sym_ptr + toff + slot, act, G, BLOCK_L).to(tl.int32)
            fc = _gather(table_ptr + (toff >> prob_bits) * sym_stride + sy, act, G, BLOCK_L)
            esc_of_lane = cb >> 20
        elif PACK32:   # chan_base: table offset | ESC << 20
            e = _gather(table_ptr + (x & mask).to(tl.int32) + (cb & 0xFFFFF), act, G, BLOCK_L)
            esc_of_lane = cb >> 20
        else:
            e = _gather(table_ptr + (x & mask).to(tl.int32) + cb, act, G, BLOCK_L)
        if WINDOW and not RING and PADDED:   # unmasked: the index stays below nw + L
            win = tl.load((wbase + (tl.minimum(rel, nw) + lane)).to(
                tl.pointer_type(tl.uint16), bitcast=True)).to(tl.uint32)
        elif WINDOW and not RING:   # the words this step may read, loaded beside the entry
            win = _word(wbase, rel + lane, rel + lane < nw)
        # next step's channel and table, off the state's dependency chain
        if LINKS:
            cb = _smem_entry(lbase, cb & 0x7FF)
        else:
            ch = ch + lane_inc
            ch = tl.where(ch >= num_channels, ch - num_channels, ch)
            cb = _gather(chan_base_ptr + ch, lane_ok, G, BLOCK_L)
        if PACK32 and SYMBYTES:   # the slot entry's fields, unpacked
            freq = ((fc & 0xFFF) + 1).to(tl.uint32)
            bias = (slot - (fc >> 12)).to(tl.uint32)
            sym = sy
            is_esc = act & (sym == esc_of_lane)
        elif PACK32 or SMEM:   # (freq - 1) | bias << 12 | symbol << 24
            freq = ((e & 0xFFF) + 1).to(tl.uint32)
            bias = ((e >> 12) & 0xFFF).to(tl.uint32)
            sym = (e >> 24) & 0xFF
            is_esc = act & (sym == esc_of_lane)
        else:
            freq = (e & 0xFFFF).to(tl.uint32)
            bias = ((e >> 16) & 0xFFFF).to(tl.uint32)
            sym = (e >> 32) & 0xFFFF
            is_esc = act & (((e >> 48) & 1) != 0)
        xn = freq * (x >> pb) + bias
        need = act & (xn < RANS_L)
        if BITS:
            pos, nread = _lane_scan(need, below, BITS)
        else:
            ni = need.to(tl.int32)
            pos = tl.cumsum(ni, 1) - ni
        if WINDOW and RING:   # word rel + pos is at k < 2 BLOCK_L of the two windows
            k = rel - wb + pos
            kk = k & (BLOCK_L - 1)
            w = tl.where(k < BLOCK_L, tl.gather(win0, kk, 1), tl.gather(win1, kk, 1))
        elif WINDOW:
            w = tl.gather(win, pos, 1)
        else:
            w = _word(wbase, rel + pos, need & (rel + pos < nw))
        x = tl.where(need, (xn << 16) | w, tl.where(act, xn, x))
        tl.store(optr, sym.to(tl.int16), mask=act)
        if BITS:
            rel += nread
        elif POSITIONS and ESC_BRANCH:
            # one reduction counts the words read (low 16 bits: at most 4096 lanes, the
            # level limit) and the escape symbols (high bits)
            both = tl.sum(ni + (is_esc.to(tl.int32) << 16), 1)[:, None]
            rel += both & 0xFFFF
        else:
            rel += tl.sum(ni, 1)[:, None]
        if WINDOW and RING:   # the reading entered the second window: slide by one
            shift = rel - wb >= BLOCK_L
            nb = wb + 2 * BLOCK_L
            win2 = _word(wbase, nb + lane, shift & (nb + lane < nw))
            win0 = tl.where(shift, win1, win0)
            win1 = tl.where(shift, win2, win1)
            wb = tl.where(shift, wb + BLOCK_L, wb)
        if not POSITIONS:
            nesc += is_esc.to(tl.int32)
        elif SMEM:   # a branch per warp, in inline PTX
            _record_escapes_ptx(is_esc, cnt_addr, pos_addr, ecap2, optr.to(tl.int64), out_addr)
        elif ESC_BRANCH:   # escapes are rare: record them behind a uniform branch
            if BITS:
                any_esc = tl.max(tl.max(is_esc.to(tl.int32), 1), 0)
            else:
                any_esc = tl.sum(tl.sum(both >> 16, 1), 0)
            if any_esc > 0:
                _record_escapes(esc_count_ptr, esc_pos_ptr, frame, ebase, ecap,
                                out0 + t * num_lanes + lane, is_esc, lane, G, BLOCK_L)
        else:
            _record_escapes(esc_count_ptr, esc_pos_ptr, frame, ebase, ecap,
                            out0 + t * num_lanes + lane, is_esc, lane, G, BLOCK_L)
        optr += num_lanes
    if not POSITIONS:
        tl.atomic_add(esc_count_ptr + frame, tl.sum(nesc, 1)[:, None], mask=cok[:, None],
                      sem="relaxed")
    status |= tl.max((rel != nw).to(tl.int32), 1)[:, None] * BAD_WORD_COUNT
    status |= tl.max((lane_ok & (x != RANS_L)).to(tl.int32), 1)[:, None] * BAD_FINAL_STATE
    tl.store(status_ptr + cid[:, None], status, mask=cok[:, None])


@triton.jit
def _div_rcp(x, f, e):
    """x // f by the entry's reciprocal m (bits 32..63 of e, :func:`reciprocals`),
    Granlund-Montgomery: q = (t + ((x - t) >> sh1)) >> sh2, t = umulhi(x, m),
    sh1 = min(l, 1), sh2 = max(l - 1, 0), l = ceil(log2 f); exact for all x."""
    m = ((e >> 32) & 0xFFFFFFFF).to(tl.uint32)
    fb = (f - 1).to(tl.float32).to(tl.uint32, bitcast=True)
    l2 = tl.where(f > 1, (fb >> 23) - 126, 0)
    hi = tl.umulhi(x, m)
    return (hi + ((x - hi) >> tl.minimum(l2, 1))) >> tl.where(l2 > 0, l2 - 1, 0)


@triton.jit
def _enc_entry(sym_ptr, idx, act, table_ptr, chan_base_ptr, ch, alphabet):
    """Symbol at idx and its packed entry (:func:`encode_table`); 0 outside the alphabet."""
    s = tl.load(sym_ptr + idx, mask=act, other=0).to(tl.int32)
    inside = (s >= 0) & (s < alphabet)
    e = tl.load(table_ptr + tl.load(chan_base_ptr + ch, mask=act, other=0) + s,
                mask=act & inside, other=0)
    return s, e


@triton.jit(do_not_specialize=["prob_bits"])
def _encode_kernel(sym_ptr, c_nsym_ptr, c_in_ptr, c_chan_ptr, table_ptr, chan_base_ptr,
                   alphabet, wbuf_ptr, count_ptr, state_ptr, status_ptr,
                   num_chunks, num_lanes, lane_inc, num_channels, prob_bits, chunk_cap,
                   G: tl.constexpr, BLOCK_L: tl.constexpr, DENSE: tl.constexpr,
                   RCP: tl.constexpr, BITS: tl.constexpr):
    """DENSE: each chunk's words are placed at once, packed at the end of its
    worst-case region (int16 words); else every step writes one int32 slot per lane
    (-1: no word) and the compaction kernel drops the empty slots.
    RCP: x // freq by a multiply with the entry's reciprocal (:func:`encode_table`)."""
    cid = tl.program_id(0) * G + tl.arange(0, G)
    cok = cid < num_chunks
    lane = tl.arange(0, BLOCK_L)[None, :]
    below = (tl.full([1, BLOCK_L], 1, tl.uint32) << lane.to(tl.uint32)) - 1
    nsym = tl.load(c_nsym_ptr + cid, mask=cok, other=0)[:, None]
    in0 = tl.load(c_in_ptr + cid, mask=cok, other=0)[:, None]
    na = tl.minimum(nsym, num_lanes)
    lane_ok = lane < na
    steps = tl.max(tl.max((nsym + num_lanes - 1) // num_lanes, 1), 0)
    # channel of each lane at the last step, then stepping backwards
    top = (tl.load(c_chan_ptr + cid, mask=cok, other=0)[:, None].to(tl.int64) + lane
           + (steps - 1).to(tl.int64) * num_lanes) % num_channels
    ch = top.to(tl.int32)
    x = tl.full([G, BLOCK_L], RANS_L, tl.uint32)
    pb = prob_bits.to(tl.uint32)
    # words so far: per lane, summed once at the end; DENSE: per chunk (all lanes)
    count = tl.zeros([G, BLOCK_L], tl.int32)
    bad = tl.zeros([G, BLOCK_L], tl.int32)
    wbase = cid[:, None].to(tl.int64) * chunk_cap
    # software pipeline: the symbol and table entry of step t - 1 load while step t codes
    act = lane_ok & ((steps - 1) * num_lanes + lane < nsym)
    s, e = _enc_entry(sym_ptr, in0 + (steps - 1) * num_lanes + lane, act, table_ptr,
                      chan_base_ptr, ch, alphabet)
    for i in range(0, steps):
        t = steps - 1 - i
        act = lane_ok & (t * num_lanes + lane < nsym)
        ch_n = ch - lane_inc
        ch_n = tl.where(ch_n < 0, ch_n + num_channels, ch_n)
        nxt = (t - 1) * num_lanes + lane            # below lane only when t = 0
        act_n = lane_ok & (nxt >= lane) & (nxt < nsym)
        s_n, e_n = _enc_entry(sym_ptr, in0 + (t - 1) * num_lanes + lane, act_n, table_ptr,
                              chan_base_ptr, ch_n, alphabet)
        f = (e & 0xFFFF).to(tl.uint32)
        cum = ((e >> 16) & 0xFFFF).to(tl.uint32)
        bad |= (act & (f == 0)).to(tl.int32)
        f = tl.where(f == 0, 1, f)
        need = act & ((x >> (32 - pb)) >= f)
        if DENSE:
            pos, n = _lane_scan(need, below, BITS)
            count += n
            tl.store(wbuf_ptr + wbase + chunk_cap - count + pos, (x & 0xFFFF).to(tl.int16),
                     mask=need)
        else:
            tl.store(wbuf_ptr + wbase + t * num_lanes + lane,
                     tl.where(need, (x & 0xFFFF).to(tl.int32), -1), mask=act)
            count += need.to(tl.int32)
        x = tl.where(need, x >> 16, x)
        if RCP:
            q = _div_rcp(x, f, e)
        else:
            q = x // f
        x = tl.where(act, (q << pb) + (x - q * f) + cum, x)
        s, e, ch = s_n, e_n, ch_n
    tl.store(state_ptr + cid[:, None].to(tl.int64) * num_lanes + lane, x.to(tl.int32, bitcast=True),
             mask=cok[:, None] & lane_ok)
    if DENSE:
        tl.store(count_ptr + cid, tl.max(count, 1), mask=cok)
    else:
        tl.store(count_ptr + cid, tl.sum(count, 1), mask=cok)
    tl.store(status_ptr + cid, tl.max(bad, 1) * BAD_SYMBOL, mask=cok)


@triton.jit
def _enc_symbol(sbase, idx, lane_ok, nsym):
    """The symbol at chunk index idx (0 where the lane has no step there)."""
    return tl.load(sbase + idx, mask=lane_ok & (idx >= 0) & (idx < nsym), other=0).to(tl.int32)


@triton.jit(do_not_specialize=["prob_bits"])
def _encode_rel_kernel(sym_ptr, c_nsym_ptr, c_in_ptr, c_chan_ptr, table_ptr, links_ptr,
                       alphabet, wbuf_ptr, count_ptr, state_ptr, status_ptr,
                       num_chunks, num_lanes, num_channels, prob_bits, chunk_cap,
                       G: tl.constexpr, BLOCK_L: tl.constexpr, BITS: tl.constexpr,
                       SDEPTH: tl.constexpr, PF: tl.constexpr):
    """:func:`_encode_kernel` (DENSE, RCP) with offsets relative to the chunk in int32 and
    the channels stepped through ``links_ptr`` (:func:`encode_links`): per channel the
    previous step's channel | its table row offset << 11, one read a step.  SDEPTH (1 to
    4): the symbols are loaded that many steps ahead.  PF > 0 (compiled kernels): each
    step also prefetches into L1 the symbols PF steps ahead, which the coding loop
    otherwise waits for from DRAM."""
    cid = tl.program_id(0) * G + tl.arange(0, G)
    cok = cid < num_chunks
    lane = tl.arange(0, BLOCK_L)[None, :]
    below = (tl.full([1, BLOCK_L], 1, tl.uint32) << lane.to(tl.uint32)) - 1
    nsym = tl.load(c_nsym_ptr + cid, mask=cok, other=0).to(tl.int32)[:, None]
    sbase = sym_ptr + tl.load(c_in_ptr + cid, mask=cok, other=0)[:, None]
    na = tl.minimum(nsym, num_lanes)
    lane_ok = lane < na
    steps = tl.max(tl.max((nsym + num_lanes - 1) // num_lanes, 1), 0)
    # channel of each lane at the last step, then stepping backwards
    ch = ((tl.load(c_chan_ptr + cid, mask=cok, other=0)[:, None].to(tl.int64) + lane
           + (steps - 1).to(tl.int64) * num_lanes) % num_channels).to(tl.int32)
    x = tl.full([G, BLOCK_L], RANS_L, tl.uint32)
    pb = prob_bits.to(tl.uint32)
    count = tl.zeros([G, BLOCK_L], tl.int32)         # words so far, per chunk (all lanes)
    bad = tl.zeros([G, BLOCK_L], tl.int32)
    wend = wbuf_ptr + (cid[:, None].to(tl.int64) + 1) * chunk_cap   # words end there
    # software pipeline: the symbol, link and table entry of step t - 1 load while step t
    # codes
    idx = (steps - 1) * num_lanes + lane
    act = lane_ok & (idx < nsym)
    lk = tl.load(links_ptr + ch)
    s = _enc_symbol(sbase, idx, lane_ok, nsym)
    e = tl.load(table_ptr + ((lk >> 11) + s), mask=act & (s.to(tl.uint32) < alphabet), other=0)
    # the symbols of steps t - 1 .. t - SDEPTH + 1, loaded ahead
    s1 = s
    s2 = s
    s3 = s
    if SDEPTH >= 2:
        s1 = _enc_symbol(sbase, idx - num_lanes, lane_ok, nsym)
    if SDEPTH >= 3:
        s2 = _enc_symbol(sbase, idx - 2 * num_lanes, lane_ok, nsym)
    if SDEPTH >= 4:
        s3 = _enc_symbol(sbase, idx - 3 * num_lanes, lane_ok, nsym)
    for i in range(0, steps):
        # step t - 1 (steps is the program's longest chunk: test against the chunk's own)
        idx_n = idx - num_lanes
        act_n = lane_ok & (idx_n >= 0) & (idx_n < nsym)
        lk_n = tl.load(links_ptr + (lk & 0x7FF))
        if PF > 0:
            _prefetch(sbase + (idx - PF * num_lanes), lane_ok & (idx >= PF * num_lanes))
        if SDEPTH == 1:
            s_n = _enc_symbol(sbase, idx_n, lane_ok, nsym)
        else:
            s_n = s1
            if SDEPTH == 2:
                s1 = _enc_symbol(sbase, idx - 2 * num_lanes, lane_ok, nsym)
            elif SDEPTH == 3:
                s1 = s2
                s2 = _enc_symbol(sbase, idx - 3 * num_lanes, lane_ok, nsym)
            else:
                s1 = s2
                s2 = s3
                s3 = _enc_symbol(sbase, idx - 4 * num_lanes, lane_ok, nsym)
        e_n = tl.load(table_ptr + ((lk_n >> 11) + s_n),
                      mask=act_n & (s_n.to(tl.uint32) < alphabet), other=0)
        f = (e & 0xFFFF).to(tl.uint32)
        cum = ((e >> 16) & 0xFFFF).to(tl.uint32)
        bad |= (act & (f == 0)).to(tl.int32)
        f = tl.where(f == 0, 1, f)
        need = act & ((x >> (32 - pb)) >= f)
        pos, n = _lane_scan(need, below, BITS)
        count += n
        tl.store(wend + (pos - count), (x & 0xFFFF).to(tl.int16), mask=need)
        x = tl.where(need, x >> 16, x)
        q = _div_rcp(x, f, e)
        x = tl.where(act, (q << pb) + (x - q * f) + cum, x)
        s, e, lk, idx, act = s_n, e_n, lk_n, idx_n, act_n
    tl.store(state_ptr + cid[:, None].to(tl.int64) * num_lanes + lane, x.to(tl.int32, bitcast=True),
             mask=cok[:, None] & lane_ok)
    tl.store(count_ptr + cid, tl.max(count, 1), mask=cok)
    tl.store(status_ptr + cid, tl.max(bad, 1) * BAD_SYMBOL, mask=cok)


@triton.jit
def _write_states(state_ptr, words_ptr, cid, w0, na, num_lanes, BLOCK_L: tl.constexpr):
    """A chunk's final encoder states = the decoder's initial states: two words per
    active lane, low half first (clause 7.3.2)."""
    lane = tl.arange(0, BLOCK_L)
    st = tl.load(state_ptr + cid.to(tl.int64) * num_lanes + lane, mask=lane < na, other=0)
    tl.store(words_ptr + w0 + 2 * lane, (st & 0xFFFF).to(tl.int16), mask=lane < na)
    tl.store(words_ptr + w0 + 2 * lane + 1, ((st >> 16) & 0xFFFF).to(tl.int16), mask=lane < na)


@triton.jit
def _compact_kernel(wbuf_ptr, state_ptr, c_nsym_ptr, c_word0_ptr, words_ptr,
                    num_lanes, chunk_cap, BLOCK_L: tl.constexpr, BLOCK: tl.constexpr):
    cid = tl.program_id(0)
    nsym = tl.load(c_nsym_ptr + cid)
    w0 = tl.load(c_word0_ptr + cid)
    na = tl.minimum(nsym, num_lanes)
    _write_states(state_ptr, words_ptr, cid, w0, na, num_lanes, BLOCK_L)
    run = w0 + 2 * na
    idx = tl.arange(0, BLOCK)
    base = cid.to(tl.int64) * chunk_cap
    for b in range(0, nsym, BLOCK):
        m = b + idx < nsym
        w = tl.load(wbuf_ptr + base + b + idx, mask=m, other=-1)
        f = (w >= 0).to(tl.int32)
        tl.store(words_ptr + run + tl.cumsum(f, 0) - f, w.to(tl.int16), mask=w >= 0)
        run += tl.sum(f, 0)


@triton.jit
def _compact_dense_kernel(wbuf_ptr, state_ptr, count_ptr, c_nsym_ptr, c_word0_ptr, words_ptr,
                          num_lanes, chunk_cap, BLOCK_L: tl.constexpr, BLOCK: tl.constexpr):
    """Chunk words of a DENSE encode: initial states, then the count words packed at
    the end of the chunk's region of ``wbuf``."""
    cid = tl.program_id(0)
    nsym = tl.load(c_nsym_ptr + cid)
    w0 = tl.load(c_word0_ptr + cid)
    count = tl.load(count_ptr + cid)
    na = tl.minimum(nsym, num_lanes)
    _write_states(state_ptr, words_ptr, cid, w0, na, num_lanes, BLOCK_L)
    src = wbuf_ptr + cid.to(tl.int64) * chunk_cap + chunk_cap - count
    dst = words_ptr + w0 + 2 * na
    idx = tl.arange(0, BLOCK)
    for b in range(0, count, BLOCK):
        m = b + idx < count
        tl.store(dst + b + idx, tl.load(src + b + idx, mask=m, other=0), mask=m)


# -- host side -------------------------------------------------------------------

# words a buffer of rANS words holds past its end for the unmasked window loads of
# decode (PADDED): the widest window, 128 lanes
WORD_PAD = 128


def padded_words(n: int, device, dtype=torch.int16) -> torch.Tensor:
    """An uninitialised buffer of ``n`` words with WORD_PAD zero words past its end (the
    returned tensor is its first ``n``): what :func:`decode` reads without masks."""
    buf = torch.empty(n + WORD_PAD, dtype=dtype, device=device)
    buf[n:].zero_()
    return buf[:n]


def _room(t: torch.Tensor) -> int:
    """Elements of ``t``'s storage past its last element."""
    return t.untyped_storage().nbytes() // t.element_size() - t.storage_offset() - t.numel()


# SYMSMEM: the most slot bytes the dynamic shared array holds (32 tables of 2^12 slots)
SYM_SMEM_BYTES = 1 << 17


def _with_dynamic_shared(kernel, grid, args, kwargs, nbytes: int) -> bool:
    """Make the compiled ``kernel`` for these arguments launch with ``nbytes`` of
    dynamic shared memory (its own first DYN_RESERVE bytes included): Triton sizes a
    launch's dynamic shared memory by its own use, and the SYMSMEM path puts its slot
    bytes past that.  Set before the kernel is first loaded (the driver's opt-in for
    more than 48 KiB happens then).  False where that cannot be done (this Triton has
    not the same compiled-kernel fields, Triton uses more than DYN_RESERVE itself, or
    the kernel was loaded already): the caller then takes the path without it."""
    try:
        from triton.compiler.compiler import make_backend
        ck = kernel.warmup(*args, grid=grid, **kwargs)
        ck = ck.result() if hasattr(ck, "result") else ck
        if getattr(ck, "tkb_dynamic_shared", None) == nbytes:
            return True
        md = ck.metadata
        drv = triton.runtime.driver.active
        most = drv.utils.get_device_properties(drv.get_current_device())["max_shared_mem"]
        # the static arrays, and the 1 KiB a block reserves for the system (sm_80 on)
        static = 4 * (SMEM_ENTRIES.value + LINK_ENTRIES.value) + 1024
        if ck.module is not None or md.shared > DYN_RESERVE.value or nbytes + static > most:
            return False
        ck.metadata = md._replace(shared=nbytes)
        ck.packed_metadata = make_backend(md.target).pack_metadata(ck.metadata)
        ck.tkb_dynamic_shared = nbytes
        return True
    except (AttributeError, ImportError, KeyError, TypeError, ValueError):
        return False


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


class DecodeTables:
    """A parameter set's slot tables on the device, in the kernel's packed form:
    32-bit entries (freq - 1) | bias << 12 | symbol << 24 when prob_bits <= 12 and
    every alphabet has at most 256 symbols (chan_base then carries ESC << 20),
    else 64-bit entries freq | bias << 16 | symbol << 32 | is_escape << 48.  With the
    32-bit entries also their two-level form for the global-memory path (SYMBYTES):
    ``sym_bytes``, the symbol of each slot as a byte, and ``sym_entries``, per table
    and symbol (freq - 1) | cum << 12, ``sym_stride`` entries a table (a quarter of the
    bytes and fewer L1 misses; 512 KiB of slot entries for 32 tables of 2^12 slots
    become 128 KiB + 4 KiB)."""

    def __init__(self, lookup, alphabet_sizes, escapes: bool, table_of_channel, prob_bits: int,
                 device, pack32: bool = True):
        alph = np.asarray(alphabet_sizes, dtype=np.int64)
        tmap = np.asarray(table_of_channel, dtype=np.int64)
        self.pack32 = pack32 and prob_bits <= 12 and int(alph.max()) <= 256
        if self.pack32:
            freq, bias, sym = (np.asarray(a, dtype=np.int64) for a in lookup)
            e = (freq - 1) | (bias << 12) | (sym << 24)
            esc = (alph - 1)[tmap] if escapes else np.full(tmap.size, 0xFFF)   # 0xFFF: none
            self.table = torch.from_numpy(e.astype(np.uint32).view(np.int32)).to(device)
            self.chan_base = torch.from_numpy(((tmap << prob_bits) | (esc << 20))
                                              .astype(np.int32)).to(device)
            # two-level form (SYMBYTES): each slot's symbol as a byte, and per table and
            # symbol (freq - 1) | cum << 12, sym_stride entries a table (cum = slot - bias
            # at any slot of the symbol; symbols without slots keep 0, never read)
            nt = alph.size
            self.sym_stride = int(alph.max())
            # (padded to whole int32 words: the SYMSMEM path copies it by words)
            self.sym_words = -(-sym.size // 4)
            self.sym_bytes = torch.from_numpy(np.concatenate(
                [sym, np.zeros(4 * self.sym_words - sym.size, np.int64)]).astype(np.uint8)
            ).to(device)
            per = sym.size // nt
            fc = np.zeros(nt * self.sym_stride, np.int64)
            tab = np.arange(sym.size) // per
            cum = np.arange(sym.size) % per - bias
            fc[tab * self.sym_stride + sym] = (freq - 1) | (cum << 12)
            self.sym_entries = torch.from_numpy(fc.astype(np.int32)).to(device)
            # the table padded to the SMEM decode path's shared array, where it fits;
            # else the two-level symbol table, where it fits (SMEM2: the slot bytes then
            # go to dynamic shared memory, or are read through L1)
            self.smem = self._smem_padded(self.table)
            self.sym_smem = None if self.smem is not None else \
                self._smem_padded(self.sym_entries)
            # channel links: ESC in 8 bits (none: 255, above every symbol of an alphabet of
            # at most 255), at most LINK_ENTRIES channels; the one-level path's links carry
            # the table's offset, the two-level path's its index (< 2^13)
            self._link_esc = np.where(esc == 0xFFF, 255, esc)
            self._link_ok = (self.smem is not None or self.sym_smem is not None) and \
                tmap.size <= LINK_ENTRIES.value and (escapes or int(alph.max()) <= 255)
            self._link_off = tmap << prob_bits if self.smem is not None else tmap
            self._links = {}
        else:
            self.table = decode_table(lookup, alphabet_sizes, escapes, device)
            self.chan_base = torch.from_numpy((tmap << prob_bits).astype(np.int32)).to(device)
            self.smem = self.sym_smem = None
            self.sym_bytes = self.sym_entries = None
            self.sym_stride = self.sym_words = 0
            self._link_ok = False

    @staticmethod
    def _smem_padded(t: torch.Tensor):
        """``t`` padded with zeros to SMEM_ENTRIES; None where it does not fit."""
        n = t.numel()
        return None if n > SMEM_ENTRIES.value else torch.cat(
            [t, t.new_zeros(SMEM_ENTRIES.value - n)])

    def links(self, lane_inc: int):
        """The LINKS array for chunks whose lanes advance ``lane_inc`` channels a step
        (num_lanes mod num_channels): per channel c, (c + lane_inc) mod num_channels |
        its table offset (``smem``) or index (``sym_smem``) << 11 | its ESC << 24,
        padded to LINK_ENTRIES; None where the parameter set does not fit the packing."""
        if not self._link_ok:
            return None
        if lane_inc not in self._links:
            d = self._link_off.size
            nxt = (np.arange(d) + lane_inc) % d
            e = nxt | (self._link_off << 11) | (self._link_esc << 24)
            pad = np.zeros(LINK_ENTRIES.value, np.int64)
            pad[:d] = e
            self._links[lane_inc] = torch.from_numpy(
                pad.astype(np.uint32).view(np.int32)).to(self.table.device)
        return self._links[lane_inc]


def decode_table(lookup, alphabet_sizes, escapes: bool, device) -> torch.Tensor:
    """Packed 64-bit slot entries of all tables (tables.decode_lookup order):
    freq | bias << 16 | symbol << 32 | (symbol is its table's ESC) << 48."""
    freq, bias, sym = (np.asarray(a, dtype=np.int64) for a in lookup)
    e = freq | (bias << 16) | (sym << 32)
    if escapes:
        per = freq.size // len(alphabet_sizes)
        esc = np.repeat(np.asarray(alphabet_sizes, dtype=np.int64) - 1, per)
        e |= (sym == esc).astype(np.int64) << 48
    return torch.from_numpy(e).to(device)


def reciprocals(freq) -> np.ndarray:
    """Granlund-Montgomery multipliers m of divisors f (1 <= f <= 2^16): with
    l = ceil(log2 f), m = floor(2^32 (2^l - f) / f) + 1 (0 for f = 1), so that
    floor(x / f) = (t + ((x - t) >> min(l, 1))) >> max(l - 1, 0), t = (x m) >> 32,
    for every 32-bit x.  Entries with f = 0 (no symbol) get 0."""
    fc = np.maximum(np.asarray(freq, dtype=np.int64), 1)
    lg = np.frexp((fc - 1).astype(np.float64))[1].astype(np.int64)    # bit length of f - 1
    return np.where(fc > 1, ((1 << 32) * ((1 << lg) - fc)) // fc + 1, 0)


def encode_table(freq_all: np.ndarray, cum_all: np.ndarray, device) -> torch.Tensor:
    """Packed 64-bit entries freq | cum << 16 | reciprocal(freq) << 32 of
    [num_tables, alphabet] arrays (prob_bits <= 15: freq <= 2^15, cum < 2^15)."""
    f = np.asarray(freq_all, np.int64)
    e = f | (np.asarray(cum_all, np.int64) << 16) | (reciprocals(f) << 32)
    return torch.from_numpy(np.ascontiguousarray(e).ravel()).to(device)


def encode_links(chan_base: torch.Tensor, lane_inc: int, table_entries: int):
    """The encoder's channel links: per channel c, (c - lane_inc) mod D (the channel a
    lane codes at the step before) | chan_base[c] << 11; None where D > LINK_ENTRIES or
    a table offset needs more than 20 bits."""
    d = chan_base.numel()
    if d > LINK_ENTRIES.value or table_entries > 1 << 20:
        return None
    prev = torch.remainder(torch.arange(d, device=chan_base.device) - lane_inc, d)
    return (prev | (chan_base.to(torch.int64) << 11)).to(torch.int32)


class ChunkPlan:
    """The chunks of a batch of frames that share num_lanes and lane_steps.

    ``frame_symbols``: symbols of each frame; frame f's symbols start at
    ``sym_start[f]`` of the batch's symbol array and chunk k of a frame starts at
    its symbol k * chunk_size (channel (k * chunk_size) mod num_channels).
    """

    def __init__(self, frame_symbols, num_lanes: int, lane_steps: int, num_channels: int,
                 device):
        n = np.asarray(frame_symbols, dtype=np.int64)
        chunk = num_lanes * lane_steps
        self.num_lanes, self.lane_steps, self.chunk, self.d = num_lanes, lane_steps, chunk, \
            num_channels
        self.sym_start = np.cumsum(n) - n
        per = -(-n // chunk)
        self.frame_chunks = per
        self.num_chunks = int(per.sum())
        frame = np.repeat(np.arange(n.size), per)
        k = np.arange(self.num_chunks) - np.repeat(np.cumsum(per) - per, per)
        first = k * chunk
        self.nsym = np.minimum(n[frame] - first, chunk)
        self.active = np.minimum(self.nsym, num_lanes)
        self.frame = frame
        self.total = int(n.sum())
        self.frame_symbols = n
        dev = device
        self.t_nsym = torch.from_numpy(self.nsym.astype(np.int32)).to(dev)
        self.t_sym0 = torch.from_numpy(self.sym_start[frame] + first).to(dev)
        self.t_chan = torch.from_numpy((first % max(num_channels, 1)).astype(np.int32)).to(dev)
        self.t_frame = torch.from_numpy(frame.astype(np.int32)).to(dev)
        self.device = dev


def _launch_shape(num_lanes: int, num_chunks: int, g: int | None = None,
                  explicit: bool = False):
    """Lanes padded to a power of two; G chunks per program: the launch variant's on a
    GPU, as many as fit 4096 lanes in the interpreter, which runs programs one after the
    other (unless ``explicit``: a test of the variant's own G)."""
    block_l = max(2, _pow2(num_lanes))
    most = 4096 if INTERPRET else 64
    if g is None or (most > 64 and not explicit):
        g = max(1, min(_pow2(num_chunks) if most > 64 else 2, most // block_l))
    return block_l, g, (triton.cdiv(max(num_chunks, 1), g),)


def _programs(groups: int, v: dict, device) -> int:
    """Programs of a launch over ``groups`` groups of chunks: all of them, or at most
    PROGRAMS, or PER_SM per multiprocessor (each program then loops over groups)."""
    most = v.pop("PROGRAMS", None)
    per_sm = v.pop("PER_SM", None)
    if per_sm and not INTERPRET:
        most = per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(groups, most or groups))


# launch variants, chosen by the GPU benchmark (BENCHMARKS.md).  BITS (the lane scan
# as a vote and popcounts) applies where a chunk has at most 32 lanes.
# the launch of the last decode() call (for tests): smem, links, G, programs, padded
last_decode: dict = {}
# SMEM (where the tables fit, on a GPU, 32 lanes): SMEM_G chunks per program, a warp each
DECODE_VARIANT = dict(WINDOW=True, ESC_BRANCH=True, G=1, num_warps=1, BITS=True, SMEM=True,
                      SMEM_G=8, SMEM2_G=32, SMEM_MAXNREG=48, SMEM2_MAXNREG=64, RING=True,
                      SYMBYTES=True, PADDED=True, SYMSMEM=True, SYMSMEM_G=32)
ENCODE_VARIANT = dict(G=1, num_warps=1, DENSE=True, RCP=True, BITS=True, REL=True, SDEPTH=1,
                      PF=8)
COMPACT_VARIANT = dict(BLOCK=1024, num_warps=4)
def _scan_flags(v: dict, block_l: int) -> dict:
    v["BITS"] = bool(v.get("BITS")) and block_l <= 32
    return v


def decode(plan: ChunkPlan, words: torch.Tensor, chunk_words: torch.Tensor,
           tables: DecodeTables, prob_bits: int, num_escapes=None, variant=None):
    """Decode every chunk of ``plan`` (clause 7.3.2).

    ``words``: int16 [total words] of all frames; ``chunk_words``: int64 [chunks];
    ``tables``: the parameter set's :class:`DecodeTables`;
    ``num_escapes``: escapes each frame declares, a host array (None: no escapes).
    Returns (symbols int16 [sum of frame symbols], status int32 [chunks],
    escape positions int64 [sum num_escapes] (sorted, batch symbol indices),
    escape counts int32 [frames]).  Escape positions are stored as keys 2 * index; a
    frame's unfilled slots hold 2 * (its end) - 1, so each frame's keys stay in its
    own segment even when it decodes fewer escapes than it declares.
    """
    dev = plan.device
    total = plan.total
    out = torch.empty(max(total, 1), dtype=torch.int16, device=dev)
    nf = plan.frame_chunks.size
    status = torch.zeros(max(plan.num_chunks, 1), dtype=torch.int32, device=dev)
    ne_h = np.zeros(nf, dtype=np.int64) if num_escapes is None else \
        np.asarray(num_escapes, dtype=np.int64)
    n_total = int(ne_h.sum())
    # per frame: escapes declared, their first slot, and 2 * (the frame's end) - 1 (what
    # its unfilled slots hold); copied in by fill() just before the launch: a copy from
    # pageable host memory waits for the stream, and the host work of the launch (kernel
    # lookup, variant choice) then overlaps the work queued before this call
    host = np.concatenate([ne_h, np.cumsum(ne_h) - ne_h,
                           2 * np.cumsum(plan.frame_symbols) - 1])
    per_frame = torch.empty(host.size, dtype=torch.int64, device=dev)
    ne, ebase, ends = per_frame[:nf], per_frame[nf:2 * nf], per_frame[2 * nf:]
    esc_pos = torch.zeros(n_total + 1, dtype=torch.int64, device=dev)
    esc_count = torch.zeros(max(nf, 1), dtype=torch.int32, device=dev)

    def fill():
        per_frame.copy_(torch.from_numpy(host))
        if n_total:   # unfilled slots, repeated on the device (no large copy)
            esc_pos[:n_total] = torch.repeat_interleave(ends, ne, output_size=n_total)

    if not plan.num_chunks:
        fill()
    else:
        w1 = torch.cumsum(chunk_words, 0)
        w0 = w1 - chunk_words
        v = dict(DECODE_VARIANT, **(variant or {}))
        block_l = max(2, _pow2(plan.num_lanes))
        # shared-memory tables and escape recording in inline PTX: compiled kernels only,
        # one warp per chunk of 32 lanes (the PTX must see each element exactly once)
        smem_ok = bool(v.pop("SMEM", False)) and not INTERPRET and block_l == 32
        smem = smem_ok and tables.smem is not None
        smem_g = v.pop("SMEM_G", 8)
        smem2_g = v.pop("SMEM2_G")
        symsmem_g = v.pop("SYMSMEM_G")
        per_warp = v.pop("SMEM_PER_WARP", 1)      # chunks a warp decodes side by side
        # SMEM: registers capped (48: five programs of 8 warps fit an SM; measured best;
        # SMEM2: 64, one program of 32 warps an SM)
        maxnreg = v.pop("SMEM_MAXNREG", 0)
        maxnreg2 = v.pop("SMEM2_MAXNREG", 0)
        use_links = v.pop("LINKS", True)
        # SYMBYTES: the two-level tables, where the slot tables do not fit shared memory:
        # with SMEM (and LINKS) the symbol table in shared memory (SMEM2), else both in
        # global memory
        symbytes = bool(v.pop("SYMBYTES", False)) and not smem and tables.pack32
        smem2 = smem_ok and symbytes and use_links and tables.sym_smem is not None
        links = tables.links(plan.num_lanes % plan.d) if (smem and use_links) or smem2 \
            else None
        smem2 = smem2 and links is not None
        smem = smem or smem2
        # SYMSMEM (SMEM2, several warps a program): the slot bytes in dynamic shared memory
        symsmem = bool(v.pop("SYMSMEM", False)) and smem2 and \
            4 * tables.sym_words <= SYM_SMEM_BYTES
        g = v.pop("G")
        if smem and "G" not in (variant or {}):
            g = min(symsmem_g if symsmem else smem2_g if smem2 else smem_g,
                    32 * per_warp)                                  # at most 32 warps
        block_l, g, grid = _launch_shape(plan.num_lanes, plan.num_chunks, g,
                                         "G" in (variant or {}))
        v = _scan_flags(v, block_l)
        table = tables.sym_smem if smem2 else tables.smem if smem else \
            tables.sym_entries if symbytes else tables.table
        # RING: the global-memory path with 64-bit or one-level slot entries only (on the
        # SMEM path, under its register cap, it measured slower: 335 against 402 Gsym/s;
        # with SYMBYTES 256 against 285)
        v["RING"] = bool(v["RING"]) and not smem and not symbytes
        # PADDED: the window without masks, where the words' buffer extends far enough
        v["PADDED"] = bool(v["PADDED"]) and not v["RING"] and _room(words) >= block_l
        if smem:
            v["num_warps"] = max(1, g // per_warp)
            nreg = maxnreg2 if smem2 else maxnreg
            if nreg:
                v.setdefault("maxnreg", nreg)
        if block_l > 128 and not INTERPRET:
            # wide chunks (up to 4096 lanes, level 30): a warp-local gather of a word
            # window costs (lanes / 32)^2 shuffles a step; read the words directly,
            # with a warp per 128 lanes
            v.update(WINDOW=False, num_warps=min(8, block_l // 128))
        grid = (_programs(grid[0], v, dev),)
        args = (words, w0, w1, plan.t_nsym, plan.t_sym0, plan.t_chan, plan.t_frame, table,
                tables.sym_bytes if symbytes else table,
                tables.chan_base if links is None else links, out, status, esc_count, ebase,
                ne, esc_pos, plan.num_chunks, plan.num_lanes, plan.num_lanes % plan.d, plan.d,
                prob_bits, triton.cdiv(plan.num_chunks, g), tables.sym_stride,
                tables.sym_words)
        kw = dict(G=g, SYMBYTES=symbytes, BLOCK_L=block_l, PACK32=tables.pack32,
                  POSITIONS=n_total > 0, SMEM=smem, LINKS=links is not None, **v)
        # SYMSMEM: Triton's dynamic array (global_smem) exists where a reduction spans
        # warps: with several warps a program
        if symsmem and v["num_warps"] >= 2:
            kw["SYMSMEM"] = _with_dynamic_shared(_decode_kernel, grid, args,
                                                 dict(kw, SYMSMEM=True),
                                                 DYN_RESERVE.value + SYM_SMEM_BYTES)
        last_decode.update(smem=smem, smem2=smem2, symsmem=kw.get("SYMSMEM", False),
                           links=links is not None, G=g, programs=grid[0],
                           padded=v["PADDED"])
        fill()
        _decode_kernel[grid](*args, **kw)
    esc_pos = torch.sort(esc_pos[:n_total]).values
    return out[:total], status[:plan.num_chunks], esc_pos, esc_count[:nf]


def encode(plan: ChunkPlan, symbols: torch.Tensor, table: torch.Tensor,
           chan_base: torch.Tensor, alphabet: int, prob_bits: int, variant=None,
           compact: bool = True, compact_variant=None):
    """Encode every chunk of ``plan`` (inverse of :func:`decode`).

    ``symbols``: int16 [batch symbols]; ``table``: :func:`encode_table`;
    ``chan_base``: int32 [D] table row offset (table * alphabet) of each channel.
    Returns (words int16 [total], chunk_words int64 [chunks], status int32 [chunks]).
    """
    dev = plan.device
    nc = plan.num_chunks
    if nc == 0:
        z = torch.zeros(0, dtype=torch.int64, device=dev)
        return torch.zeros(0, dtype=torch.int16, device=dev), z, z.to(torch.int32)
    cap = plan.chunk
    v = dict(ENCODE_VARIANT, **(variant or {}))
    block_l, g, grid = _launch_shape(plan.num_lanes, nc, v.pop("G"))
    v = _scan_flags(v, block_l)
    dense = v["DENSE"]
    wbuf = torch.empty(nc * cap, dtype=torch.int16 if dense else torch.int32, device=dev)
    count = torch.empty(nc, dtype=torch.int32, device=dev)
    states = torch.empty(nc * plan.num_lanes, dtype=torch.int32, device=dev)
    status = torch.empty(nc, dtype=torch.int32, device=dev)
    links = encode_links(chan_base, plan.num_lanes % plan.d, table.numel()) if (
        v.pop("REL") and dense and v["RCP"]) else None
    sdepth = v.pop("SDEPTH")
    pf = 0 if INTERPRET else v.pop("PF")     # the prefetch is inline PTX
    v.pop("PF", None)
    if links is not None:
        v.pop("DENSE"), v.pop("RCP")
        _encode_rel_kernel[grid](symbols, plan.t_nsym, plan.t_sym0, plan.t_chan, table, links,
                                 alphabet, wbuf, count, states, status, nc, plan.num_lanes,
                                 plan.d, prob_bits, cap, G=g, BLOCK_L=block_l,
                                 SDEPTH=sdepth, PF=pf, **v)
    else:
        _encode_kernel[grid](symbols, plan.t_nsym, plan.t_sym0, plan.t_chan, table, chan_base,
                             alphabet, wbuf, count, states, status, nc, plan.num_lanes,
                             plan.num_lanes % plan.d, plan.d, prob_bits, cap, G=g,
                             BLOCK_L=block_l, **v)
    if not compact:        # the benchmark times the coding kernel alone
        return wbuf, count, status
    active = torch.from_numpy(2 * plan.active).to(dev)
    chunk_words = active + count.to(torch.int64)
    w0 = torch.cumsum(chunk_words, 0) - chunk_words
    words = padded_words(max(int(chunk_words.sum()), 1), dev)
    cv = dict(COMPACT_VARIANT, **(compact_variant or {}))
    block = min(cv.pop("BLOCK"), _pow2(cap))
    if dense:
        _compact_dense_kernel[(nc,)](wbuf, states, count, plan.t_nsym, w0, words,
                                     plan.num_lanes, cap, BLOCK_L=block_l, BLOCK=block, **cv)
    else:
        _compact_kernel[(nc,)](wbuf, states, plan.t_nsym, w0, words, plan.num_lanes, cap,
                               BLOCK_L=block_l, BLOCK=block, **cv)
    return words[:int(chunk_words.sum())], chunk_words, status
