"""An independent TKB version 1 decoder written from spec/ alone (pure Python, slow).

It was written by reading the specification only, never the reference code, to
check that the spec is complete and unambiguous: tests/test_spec_decoder.py
compares its canonical output and error classes with the reference decoder."""
import hashlib
import struct


class E(Exception):
    def __init__(self, cls, clause, msg=""):
        super().__init__(f"{cls} [{clause}] {msg}")
        self.cls = cls
        self.clause = clause


def crc32c(d):
    c = 0xFFFFFFFF
    for b in d:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


LEVELS = {
    10: dict(max_tracks=4, max_tokens=4096, max_channels=4096, max_values=1 << 20, max_vocab=1 << 20,
             max_tables=16, max_alphabet=4096, max_lanes=256, max_chunk=1 << 17, max_unit_size=1 << 23,
             max_lane_steps=4096),
    20: dict(max_tracks=16, max_tokens=65536, max_channels=16384, max_values=1 << 24, max_vocab=1 << 24,
             max_tables=64, max_alphabet=4096, max_lanes=1024, max_chunk=1 << 20, max_unit_size=1 << 27,
             max_lane_steps=8192),
    30: dict(max_tracks=255, max_tokens=1 << 20, max_channels=65536, max_values=1 << 28, max_vocab=1 << 31,
             max_tables=255, max_alphabet=4096, max_lanes=4096, max_chunk=1 << 22, max_unit_size=1 << 31,
             max_lane_steps=65536),
}
WIDTH = {0: 32, 1: 16, 2: 16, 3: 32}
STEP_MANTISSA_BITS = (0x3F800000, 0x3F8FACD6, 0x3FA14518, 0x3FB504F3, 0x3FCB2FF5, 0x3FE411F0)


def f32(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def bits32(v):
    return struct.unpack("<I", struct.pack("<f", v))[0]


def STEP(q):
    return STEP_MANTISSA_BITS[q % 6] + ((q // 6) - 24) * (1 << 23)


def mul32(a_int, step_bits):
    # binary32(level) * STEP, one RNE binary32 multiply: the exact product of two binary32 numbers
    # is representable in binary64 (24+24 bits), rounding it to binary32 once gives the RNE result.
    from fractions import Fraction
    exact = Fraction(a_int) * Fraction(f32(step_bits))
    return round_to_f32(exact)


def round_to_f32(fr):
    # RNE of an exact rational to binary32 (finite, normal range assumed, zero allowed)
    from fractions import Fraction
    if fr == 0:
        return 0
    sign = 0x80000000 if fr < 0 else 0
    a = abs(fr)
    e = 0
    while a >= 2:
        a /= 2
        e += 1
    while a < 1:
        a *= 2
        e -= 1
    m = a * (1 << 23)
    mi = int(m)
    rem = m - mi
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and mi & 1):
        mi += 1
    if mi == 1 << 24:
        mi >>= 1
        e += 1
    assert -126 <= e <= 127
    return sign | ((e + 127) << 23) | (mi & 0x7FFFFF)


def f32_to_f16_bits(b):
    sign = (b >> 16) & 0x8000
    a = b & 0x7FFFFFFF
    if a >= 0x477FF000:
        return sign | 0x7C00
    if a >= 0x38800000:
        r = a - 0x38000000
        return sign | ((r + 0x0FFF + ((r >> 13) & 1)) >> 13)
    if a < 0x33000000:
        return sign
    e = a >> 23
    m = (a & 0x007FFFFF) | 0x00800000
    s = 126 - e
    return sign | ((m + (1 << (s - 1)) - 1 + ((m >> s) & 1)) >> s)


def f32_to_bf16_bits(b):
    return (b + 0x7FFF + ((b >> 16) & 1)) >> 16


class R:
    def __init__(self, data, clause):
        self.d = data
        self.p = 0
        self.end = len(data) * 8
        self.clause = clause

    def left_bytes(self):
        return (self.end - self.p) // 8

    def need(self, n):
        if n > self.end - self.p:
            raise E("Truncated", self.clause)

    def u(self, n):
        assert self.p % 8 == 0
        self.need(8 * n)
        v = int.from_bytes(self.d[self.p // 8:self.p // 8 + n], "little")
        self.p += 8 * n
        return v

    def i8(self):
        v = self.u(1)
        return v - 256 if v >= 128 else v

    def b(self, n):
        self.need(n)
        v = 0
        for _ in range(n):
            v = (v << 1) | ((self.d[self.p >> 3] >> (7 - (self.p & 7))) & 1)
            self.p += 1
        return v

    def eg(self, k):
        z = 0
        while True:
            bit = self.b(1)
            if bit == 1:
                break
            z += 1
            if z > 32:
                raise E("Format", "3.3")
        m = self.b(z + k)
        return (1 << (z + k)) + m - (1 << k)

    def align(self):
        n = (-self.p) % 8
        if n and self.b(n):
            raise E("Format", "3.3")

    def raw(self, n):
        self.need(8 * n)
        v = self.d[self.p // 8:self.p // 8 + n]
        self.p += 8 * n
        return bytes(v)


class Decoder:
    def __init__(self, data, transforms=None, dense=False):
        self.data = data
        self.dense = dense        # records of the dense frames of clause 7.8 (clause 10.4)
        # transform_data() bytes the application supplies, by SHA-256 (clause 6.7)
        self.supplied = {hashlib.sha256(b).digest(): bytes(b) for b in transforms or ()}
        self.transforms = {}      # transform_id -> (payload, transform)
        self.frames = []
        self.tracks = {}      # track_id -> {tps_id: tps}
        self.index = []       # (track, frame_number, offset)
        self.units = {}       # offset -> (unit_type, track_id)
        self.frame_at = {}    # offset -> frame_number of decoded frames
        self.meta = {}

    def run(self):
        d = self.data
        if len(d) < 16:
            raise E("Truncated", "6.1")
        magic, vmaj, vmin, prof, lev, res, hcrc = struct.unpack("<IBBBBII", d[:16])
        if magic != 0x424B5489:
            raise E("Format", "6.1")
        if hcrc != crc32c(d[:12]):
            raise E("CRC", "6.1")
        if vmaj != 1:
            raise E("Unsupported", "6.1")
        if res:
            raise E("Format", "6.1")
        if prof not in (1, 2, 3):
            raise E("Unsupported", "8.1")
        if lev not in LEVELS:
            raise E("Unsupported", "8.2")
        self.profile, self.L = prof, LEVELS[lev]
        pos = 16
        while pos < len(d):
            if len(d) - pos < 8:
                raise E("Truncated", "6.2")
            size, utype, tid, ess, rz = struct.unpack("<IBBBB", d[pos:pos + 8])
            if size > self.L["max_unit_size"]:
                raise E("Level", "8.2")
            if len(d) - pos < 8 + size + 4:
                raise E("Truncated", "6.2")
            payload = d[pos + 8:pos + 8 + size]
            stored = int.from_bytes(d[pos + 8 + size:pos + 12 + size], "little")
            self.units[pos] = (utype, tid)
            self.unit(pos, utype, tid, ess, rz, payload, stored == crc32c(d[pos:pos + 8 + size]))
            pos += 12 + size
        # index check
        for tid, number, off in self.index:
            u = self.units.get(off)
            ok = u is not None and u == (2, tid)
            if ok and off in self.frame_at:
                ok = self.frame_at[off] == number
            if not ok:
                raise E("Format", "6.6")
        return self.frames

    def unit(self, off, utype, tid, ess, rz, payload, crc_ok):
        if not crc_ok:
            raise E("CRC", "6.2")
        if rz != 0 or ess > 1:
            raise E("Format", "6.2")
        known = 5 if self.profile == 3 else 4     # type 5: High profile only (6.2)
        if utype == 0 or utype > known:
            if utype == 0 or ess == 1:
                raise E("Unsupported", "6.2")
            return
        if tid == 255 and utype not in (3, 5):
            raise E("Format", "6.2")
        if utype == 5 and tid != 255:
            raise E("Format", "6.2")
        if utype == 5:
            self.transform(payload)
        elif utype == 1:
            self.tps(tid, payload)
        elif utype == 2:
            self.frame(off, tid, payload)
        elif utype == 3:
            self.metadata(tid, payload)
        else:
            r = R(payload, "6.6")
            n = r.u(4)
            if 12 * n > r.left_bytes():
                raise E("Truncated", "6.6")
            ents = [(r.u(4), r.u(8)) for _ in range(n)]
            if r.p != r.end:
                raise E("Format", "6.2")
            for number, o in ents:
                self.index.append((tid, number, o))

    def transform(self, payload):
        """Clause 6.7.1."""
        r = R(payload, "6.7")
        tr_id = r.u(1)
        src = r.u(1)
        if src not in (0, 1):
            raise E("Format", "6.7")
        if src == 1:
            digest = r.raw(32)
            if r.p != r.end:
                raise E("Format", "6.2")
            data = self.supplied.get(digest)
            if data is None:
                raise E("Reference", "6.7")
            r2 = R(data, "6.7")
            t = self.transform_data(r2)
            if r2.p != r2.end:
                raise E("Format", "6.7")
        else:
            t = self.transform_data(r)
            if r.p != r.end:
                raise E("Format", "6.2")
        old = self.transforms.get(tr_id)
        if old is not None:
            if old[0] != bytes(payload):
                raise E("Reference", "6.7")
            return
        self.transforms[tr_id] = (bytes(payload), t)

    def transform_data(self, r):
        L = self.L
        D = r.u(4)
        if D < 1:
            raise E("Format", "6.7")
        if D > L["max_channels"]:
            raise E("Level", "8.2")
        K = r.u(4)
        if not 1 <= K <= min(D, 8192):
            raise E("Format", "6.7")
        if K * D > L["max_values"]:
            raise E("Level", "8.2")
        F, G, mb, bb = r.u(1), r.u(1), r.u(1), r.u(1)
        if F > 40:
            raise E("Format", "6.7")
        if G > 40:
            raise E("Format", "6.7")
        if mb > 53:
            raise E("Format", "6.7")
        if not 2 <= bb <= 16:
            raise E("Format", "6.7")

        def signed(n, w):
            if n * w > r.end - r.p:
                raise E("Truncated", "7.1")
            out = []
            for _ in range(n):
                u = r.b(w)
                if u == 1 << (w - 1):
                    bad[0] = True
                out.append(u - (1 << w) if u >= 1 << (w - 1) else u)
            return out
        bad = [False]
        mean = signed(D, mb) if mb else [0] * D
        if bad[0]:
            raise E("Format", "6.7")
        basis = signed(K * D, bb)
        if bad[0]:
            raise E("Format", "6.7")
        r.align()
        return dict(D=D, K=K, F=F, G=G, mean=mean, basis=basis)

    def metadata(self, tid, payload):
        r = R(payload, "6.5")
        n = r.u(2)
        ents = []
        for _ in range(n):
            kl = r.u(1)
            k = r.raw(kl)
            vl = r.u(4)
            v = r.raw(vl)
            ents.append((k, v))
        if r.p != r.end:
            raise E("Format", "6.2")
        out = {}
        for k, v in ents:
            try:
                ks, vs = k.decode("utf-8"), v.decode("utf-8")
            except UnicodeDecodeError:
                raise E("Format", "6.5")
            if ks in out:
                raise E("Format", "6.5")
            if not ks:
                raise E("Format", "6.5")
            out[ks] = vs
        self.meta.setdefault(tid, {}).update(out)

    def tps(self, tid, payload):
        L = self.L
        r = R(payload, "6.3")
        t = {}
        t["tps_id"] = r.u(1)
        t["track_kind"] = tk = r.u(1)
        if tk not in (0, 1):
            raise E("Format", "6.3")
        t["coding_mode"] = cm = r.u(1)
        if cm not in ((0, 1, 2) if self.profile == 3 else (0, 1)):
            raise E("Format", "6.3")
        if tk == 1 and cm != 1:
            raise E("Format", "6.3")
        if self.profile == 1 and cm != 1:
            raise E("Unsupported", "8.1")
        t["source_dtype"] = sd = r.u(1)
        if sd not in ((3,) if tk == 1 else (0, 1, 2)):
            raise E("Format", "6.3")
        t["output_dtype"] = od = r.u(1)
        if cm == 1 and od != sd:
            raise E("Format", "6.3")
        if cm != 1 and od not in (0, 1, 2):
            raise E("Format", "6.3")
        t["num_channels"] = D = r.u(4)
        if tk == 1 and D != 1:
            raise E("Format", "6.3")
        if D < 1:
            raise E("Format", "6.3")
        if D > L["max_channels"]:
            raise E("Level", "8.2")
        if tk == 1:
            t["vocab_size"] = v = r.u(4)
            if v < 1:
                raise E("Format", "6.3")
            if v > L["max_vocab"]:
                raise E("Level", "8.2")
        NC = D                         # num_coded (clause 6.3)
        if cm == 2:
            x = self.transforms.get(r.u(1))
            if x is None or x[1]["D"] != D:
                raise E("Reference", "6.3")
            t["transform"] = x[1]
            NC = x[1]["K"]
        t["num_coded"] = NC
        t["grid_present"] = g = r.u(1)
        if g not in (0, 1):
            raise E("Format", "6.3")
        if g:
            t["grid_height"] = r.u(2)
            t["grid_width"] = r.u(2)
            t["num_prefix_tokens"] = r.u(2)
            T = t["num_prefix_tokens"] + t["grid_height"] * t["grid_width"]
            if T > L["max_tokens"]:
                raise E("Level", "8.2")
            if T * D > L["max_values"]:
                raise E("Level", "8.2")
            t["max_tokens"] = T
        else:
            t["max_tokens"] = r.u(4)
            if t["max_tokens"] > L["max_tokens"]:
                raise E("Level", "8.2")
            t["num_prefix_tokens"] = 0
        t["predictor"] = 0
        if tk == 0:
            t["predictor"] = p = r.u(1)
            if p not in (0, 1, 2):
                raise E("Format", "6.3")
            if p == 2 and not g:
                raise E("Format", "6.3")
        if cm != 1:
            t["per_channel_steps"] = pcs = r.u(1)
            if pcs not in (0, 1):
                raise E("Format", "6.3")
            n = NC if pcs else 1
            if n > r.left_bytes():
                raise E("Truncated", "7.1")
            t["step_code"] = [r.u(1) for _ in range(n)]
        if cm == 1:
            t["raw_bits"] = rb = r.u(1)
            if rb >= WIDTH[sd]:
                raise E("Format", "6.3")
        t["num_lanes"] = nl = r.u(2)
        if nl < 1:
            raise E("Format", "6.3")
        if nl > L["max_lanes"]:
            raise E("Level", "8.2")
        t["lane_steps"] = ls = r.u(4)
        if ls < 1:
            raise E("Format", "6.3")
        if ls > L["max_lane_steps"]:
            raise E("Level", "8.2")
        if nl * ls > L["max_chunk"]:
            raise E("Level", "8.2")
        t["chunk_size"] = nl * ls
        t["prob_bits"] = pb = r.u(1)
        if not 1 <= pb <= 15:
            raise E("Format", "6.3.5")
        t["num_tables"] = nt = r.u(1)
        if nt < 1:
            raise E("Format", "6.3.5")
        if nt > L["max_tables"]:
            raise E("Level", "8.2")
        if nt > 1:
            if NC > r.left_bytes():
                raise E("Truncated", "7.1")
            tm = [r.u(1) for _ in range(NC)]
            if max(tm) >= nt:
                raise E("Format", "6.3.5")
            t["ct"] = tm
        else:
            t["ct"] = [0] * NC
        tabs = []
        for _ in range(nt):
            a = r.u(2)
            if a == 0:
                raise E("Table", "6.3.5")
            if a > L["max_alphabet"]:
                raise E("Level", "8.2")
            if cm == 1:
                H = WIDTH[sd] - t["raw_bits"] + (1 if t["predictor"] else 0)
                if H < 16 and a > (1 << H):
                    raise E("Format", "6.3.5")
            k = r.u(1)
            if k > 15:
                raise E("Format", "6.3.5")
            freq = [r.eg(k) for _ in range(a)]
            r.align()
            tabs.append(freq)
        if r.p != r.end:
            raise E("Format", "6.2")
        for freq in tabs:
            if sum(freq) != 1 << pb:
                raise E("Table", "6.3.5")
        t["tables"] = []
        for freq in tabs:
            cum = [0]
            for f in freq[:-1]:
                cum.append(cum[-1] + f)
            sym = []
            for s, f in enumerate(freq):
                sym += [s] * f
            t["tables"].append((freq, cum, sym))
        t["payload"] = bytes(payload)
        track = self.tracks.get(tid)
        if track is None:
            if len(self.tracks) + 1 > L["max_tracks"]:
                raise E("Level", "8.2")
            track = self.tracks[tid] = {}
        old = track.get(t["tps_id"])
        if old is not None:
            if old["payload"] != t["payload"]:
                raise E("Reference", "6.3")
            return
        for o in track.values():
            for key in ("track_kind", "num_channels", "output_dtype"):
                if o[key] != t[key]:
                    raise E("Reference", "6.3")
        track[t["tps_id"]] = t

    def frame(self, off, tid, payload):
        L = self.L
        if not payload:
            raise E("Truncated", "6.4")
        t = self.tracks.get(tid, {}).get(payload[0])
        if t is None:
            raise E("Reference", "6.4")
        D = t["num_coded"]              # values coded per token (clause 7.1.2)
        r = R(payload, "6.4")
        r.u(1)
        ra = r.u(1)
        if ra == 0:
            raise E("Unsupported", "6.4")
        if ra > 1:
            raise E("Format", "6.4")
        fn = r.u(4)
        nt = r.u(4)
        if t["grid_present"] and nt != t["max_tokens"]:
            raise E("Format", "6.4")
        if nt > t["max_tokens"]:
            raise E("Format", "6.4")
        if nt * t["num_channels"] > L["max_values"]:
            raise E("Level", "8.2")
        pp = r.u(1)
        if pp not in ((0, 1, 2) if self.profile == 3 else (0, 1)):
            raise E("Format", "6.4")
        if pp:
            pos = self.presence(r, t, nt)
        else:
            pos = list(range(nt))
        K = len(pos)
        stand = None
        if pp == 2:                     # merge map, clauses 6.4 and 7.8
            if K == 0:
                raise E("Format", "6.4")
            if K == nt:
                raise E("Format", "6.4")
            n = 0
            while (1 << n) < K:
                n += 1
            stand = [r.b(n) if n else 0 for _ in range(nt - K)]
            r.align()
            if any(s >= K for s in stand):
                raise E("Format", "6.4")
        n = K * D
        C = t["chunk_size"]
        nch = (n + C - 1) // C
        cm = t["coding_mode"]
        if cm != 1:
            fsd = r.i8()
            tsp = r.u(1)
            if tsp not in (0, 1):
                raise E("Format", "6.4")
            tsd = [0] * K
            if tsp:
                if K > r.left_bytes():
                    raise E("Truncated", "7.1")
                tsd = [r.i8() for _ in range(K)]
            eb = r.u(1)
            if eb > 26:
                raise E("Format", "6.4")
            ne = r.u(4)
            if ne > n:
                raise E("Format", "6.4")
        if 4 * nch > r.left_bytes():
            raise E("Truncated", "7.1")
        cw = [r.u(4) for _ in range(nch)]
        total = sum(cw)
        if 2 * total > r.left_bytes():
            raise E("Truncated", "6.4")
        words = [r.u(2) for _ in range(total)]
        if cm != 1:
            esc_vals = [r.b(eb) for _ in range(ne)] if eb else [0] * ne
            if eb:
                pass
            r.align()
        else:
            rb = t["raw_bits"]
            raws = [r.b(rb) for _ in range(n)] if rb else [0] * n
            r.align()
        if r.p != r.end:
            raise E("Format", "6.2")
        sym = self.rans(t, words, cw, n)
        if cm == 1:
            W = WIDTH[t["source_dtype"]]
            u = [(sym[i] << t["raw_bits"]) | raws[i] for i in range(n)]
            if t["predictor"]:
                res = [[0] * D for _ in range(K)]
                for i in range(n):
                    res[i // D][i % D] = u[i] // 2 if u[i] % 2 == 0 else -((u[i] + 1) // 2)
                mo = self.predict(t, res, pos)
                bits = []
                for k in range(K):
                    for c in range(D):
                        m = mo[k][c]
                        if not (-(1 << (W - 1)) <= m <= (1 << (W - 1)) - 1):
                            raise E("Value", "7.4.2")
                for k in range(K):
                    for c in range(D):
                        m = mo[k][c]
                        bits.append(m if m >= 0 else -(m + 1) + (1 << (W - 1)))
            else:
                bits = u
            if t["track_kind"] == 1:
                if any(b >= t["vocab_size"] for b in bits):
                    raise E("Value", "7.4.2")
            vals = bits
            dt = t["output_dtype"]
        else:
            esc = [len(t["tables"][t["ct"][c]][0]) - 1 for c in range(D)]
            cnt = sum(1 for i in range(n) if sym[i] == esc[i % D])
            if cnt != ne:
                raise E("Entropy", "7.4.1")
            res = [[0] * D for _ in range(K)]
            e = 0
            for i in range(n):
                k, c = divmod(i, D)
                if sym[i] == esc[c]:
                    uu = esc[c] + esc_vals[e]
                    e += 1
                else:
                    uu = sym[i]
                res[k][c] = uu // 2 if uu % 2 == 0 else -((uu + 1) // 2)
            lev = self.predict(t, res, pos)
            for k in range(K):
                for c in range(D):
                    if abs(lev[k][c]) > (1 << 24) - 1:
                        raise E("Value", "7.5")
            base = [t["step_code"][c] if t["per_channel_steps"] else t["step_code"][0] for c in range(D)]
            if not tsp:
                for c in range(D):
                    if not 0 <= base[c] + fsd <= 255:
                        raise E("Value", "7.6.1")
            else:
                for k in range(K):
                    for c in range(D):
                        if not 0 <= base[c] + fsd + tsd[k] <= 255:
                            raise E("Value", "7.6.1")
            vals = []
            dt = t["output_dtype"]
            if cm == 2:
                v32 = self.synthesis(t, lev, [[base[c] + fsd + tsd[k] for c in range(D)]
                                              for k in range(K)])
            else:
                v32 = [[mul32(lev[k][c], STEP(base[c] + fsd + tsd[k])) for c in range(D)]
                       for k in range(K)]
            for row in v32:
                for v in row:
                    if dt == 1:
                        v = f32_to_f16_bits(v)
                    elif dt == 2:
                        v = f32_to_bf16_bits(v)
                    vals.append(v)
        self.frame_at[off] = fn
        D = t["num_channels"]
        size = {0: 4, 1: 2, 2: 2, 3: 4}[dt]
        if self.dense:                  # clause 7.8: rows of every position; clause 10.4
            rows = [[0] * D for _ in range(nt)]
            for k, p in enumerate(pos):
                rows[p] = vals[k * D:(k + 1) * D]
            if stand is not None:
                prn = [p for p in range(nt) if p not in set(pos)]
                for j, p in enumerate(prn):
                    rows[p] = vals[stand[j] * D:(stand[j] + 1) * D]
            pos, K = list(range(nt)), nt
            vals = [v for row in rows for v in row]
        rec = struct.pack("<6I", tid, fn, nt, K, D, dt) + b"".join(struct.pack("<I", p) for p in pos)
        rec += b"".join(int(v).to_bytes(size, "little") for v in vals)
        self.frames.append(rec)

    def presence(self, r, t, nt):
        pos = []
        if not t["grid_present"]:
            for p in range(nt):
                if r.b(1):
                    pos.append(p)
            r.align()
            return pos
        P, H, W = t["num_prefix_tokens"], t["grid_height"], t["grid_width"]
        for p in range(P):
            if r.b(1):
                pos.append(p)
        kept = []
        if H * W > 0:
            S = 1
            while S < max(H, W):
                S *= 2
            nodes = [(0, 0)]
            while nodes:
                ones = [(y, x) for (y, x) in nodes if r.b(1)]
                if S == 1:
                    kept += [P + y * W + x for (y, x) in ones]
                    nodes = []
                else:
                    S //= 2
                    nodes = []
                    for (y, x) in ones:
                        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                            if y + dy * S < H and x + dx * S < W:
                                nodes.append((y + dy * S, x + dx * S))
        r.align()
        return pos + sorted(kept)

    def rans(self, t, words, cw, n):
        sym = [0] * n
        C, NL, pb = t["chunk_size"], t["num_lanes"], t["prob_bits"]
        M = 1 << pb
        D = t["num_coded"]
        base = 0
        for c in range(len(cw)):
            first = c * C
            nc = min(C, n - first)
            a = min(NL, nc)
            w = words[base:base + cw[c]]
            if cw[c] < 2 * a:
                raise E("Entropy", "7.3.2")
            x = []
            for l in range(a):
                x.append(w[2 * l] | (w[2 * l + 1] << 16))
                if x[l] < 65536:
                    raise E("Entropy", "7.3.2")
            p = 2 * a
            for st in range((nc + NL - 1) // NL):
                for l in range(a):
                    j = st * NL + l
                    if j >= nc:
                        continue
                    i = first + j
                    freq, cum, look = t["tables"][t["ct"][i % D]]
                    v = x[l] & (M - 1)
                    s = look[v]
                    sym[i] = s
                    x[l] = freq[s] * (x[l] >> pb) + (v - cum[s])
                    if x[l] < 65536:
                        if p >= cw[c]:
                            raise E("Entropy", "7.3.2")
                        x[l] = (x[l] << 16) | w[p]
                        p += 1
            if p != cw[c]:
                raise E("Entropy", "7.3.2")
            if any(xx != 65536 for xx in x):
                raise E("Entropy", "7.3.2")
            base += cw[c]
        return sym

    def synthesis(self, t, lev, code):
        """Clause 7.6.3 with Python integers and exact rationals: binary32 bit patterns."""
        from fractions import Fraction
        x = t["transform"]
        K, D, F, G = x["K"], x["D"], x["F"], x["G"]
        Y = []
        for row, crow in zip(lev, code):
            yr = []
            for lv, q in zip(row, crow):
                m = (STEP_MANTISSA_BITS[q % 6] & 0x7FFFFF) | 0x800000
                y = round(Fraction(lv * m) * Fraction(2) ** (q // 6 - 47 + F))   # half to even
                if abs(y) > (1 << 24) - 1:
                    raise E("Value", "7.6.3")
                yr.append(y)
            Y.append(yr)
        out = []
        for yr in Y:
            acc = [x["mean"][c] + sum(yr[j] * x["basis"][j * D + c] for j in range(K))
                   for c in range(D)]
            out.append([round_to_f32(Fraction(a, 1 << (F + G))) for a in acc])
        return out

    def predict(self, t, res, pos):
        K = len(pos)
        D = t["num_coded"]
        start = t["num_prefix_tokens"] if t["grid_present"] else 0
        p = t["predictor"]
        lev = [row[:] for row in res]
        if p == 0:
            return lev
        if p == 1:
            for c in range(D):
                prev = 0
                for k in range(K):
                    if pos[k] >= start:
                        lev[k][c] = res[k][c] + prev
                        prev = lev[k][c]
            return lev
        W = t["grid_width"]
        where = {q: k for k, q in enumerate(pos)}
        for k in range(K):
            if pos[k] < start:
                continue
            g = pos[k] - start
            k2 = where.get(pos[k] - W) if g >= W else None
            for c in range(D):
                lev[k][c] = res[k][c] + (lev[k2][c] if k2 is not None else 0)
        return lev


def transform_data_of_tkbt(data):
    """The transform_data() bytes of a .tkbt file (a High stream with one inline transform
    unit, clause 6.7): what its SHA-256 covers."""
    d = Decoder(bytes(data))
    d.run()
    (payload, _), = d.transforms.values()
    return payload[2:]


def decode_sha(data, transforms=None, dense=False):
    """SHA-256 of the canonical output (clause 10.2), or of the dense canonical output
    (clause 10.4) when ``dense``."""
    frames = Decoder(bytes(data), transforms, dense).run()
    h = hashlib.sha256()
    for f in frames:
        h.update(f)
    return h.hexdigest()
