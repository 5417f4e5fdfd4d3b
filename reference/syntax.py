"""Declarative syntax of TKB version 1.1 (spec clause 5): the single source.

Each syntax structure is a list of :class:`Element` rows -- name, descriptor,
count, presence condition and the clause defining its semantics -- exactly as
the syntax tables of ``spec/5-syntax.md`` print them (``tests/test_spec.py``
checks that the spec's tables equal :func:`markdown_table` of these
declarations; ``python -m tokenbits.syntax`` prints them).

Counts and conditions are small expressions over the elements already read
in the same structure (and over the values of ``context``, e.g. ``num_channels``
of the active parameter set when a frame is parsed).  Descriptors:

``u8 u16 u32 u64 i8``  byte aligned little-endian fixed width
``eg(k)``             exp-Golomb of order k (k an expression), MSB first
``sb(n)``             signed n-bit two's complement field, MSB first (n an expression)
``bytes``             raw bytes
``align``             zero bits up to the next byte boundary
``NAME()``            a nested structure declared here (loop when count given)
``payload NAME()``    a payload whose syntax is given as prose in clause 7
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .bitio import BitReader, BitWriter
from .errors import TKBFormatError


@dataclass(frozen=True)
class Element:
    name: str
    descriptor: str
    count: str = ""
    condition: str = ""
    clause: str = ""


MAGIC = 0x424B5489  # bytes 89 54 4B 42: "\x89TKB"

SYNTAX: dict[str, tuple[Element, ...]] = {
    "stream_header": (
        Element("magic", "u32", clause="6.1"),
        Element("version_major", "u8", clause="6.1"),
        Element("version_minor", "u8", clause="6.1"),
        Element("profile_idc", "u8", clause="6.1"),
        Element("level_idc", "u8", clause="6.1"),
        Element("reserved_zero_32bits", "u32", clause="6.1"),
        Element("header_crc32c", "u32", clause="6.1"),
    ),
    "unit_header": (
        Element("unit_size", "u32", clause="6.2"),
        Element("unit_type", "u8", clause="6.2"),
        Element("track_id", "u8", clause="6.2"),
        Element("unit_essential", "u8", clause="6.2"),
        Element("reserved_zero_8bits", "u8", clause="6.2"),
    ),
    "track_parameter_set": (
        Element("tps_id", "u8", clause="6.3"),
        Element("track_kind", "u8", clause="6.3"),
        Element("coding_mode", "u8", clause="6.3"),
        Element("source_dtype", "u8", clause="6.3"),
        Element("output_dtype", "u8", clause="6.3"),
        Element("num_channels", "u32", clause="6.3"),
        Element("vocab_size", "u32", condition="track_kind == 1", clause="6.3"),
        Element("transform_id", "u8", condition="coding_mode == 2", clause="6.3"),
        Element("grid_present", "u8", clause="6.3.1"),
        Element("grid_height", "u16", condition="grid_present", clause="6.3.1"),
        Element("grid_width", "u16", condition="grid_present", clause="6.3.1"),
        Element("num_prefix_tokens", "u16", condition="grid_present", clause="6.3.1"),
        Element("max_tokens", "u32", condition="not grid_present", clause="6.3.1"),
        Element("predictor", "u8", condition="track_kind == 0", clause="6.3.2"),
        Element("per_channel_steps", "u8", condition="coding_mode != 1", clause="6.3.2"),
        Element("step_code", "u8", count="num_coded if per_channel_steps else 1",
                condition="coding_mode != 1", clause="6.3.2"),
        Element("raw_bits", "u8", condition="coding_mode == 1", clause="6.3.3"),
        Element("num_lanes", "u16", clause="6.3.4"),
        Element("lane_steps", "u32", clause="6.3.4"),
        Element("prob_bits", "u8", clause="6.3.5"),
        Element("num_tables", "u8", clause="6.3.5"),
        Element("table_map", "u8", count="num_coded", condition="num_tables > 1",
                clause="6.3.5"),
        Element("freq_table", "freq_table()", count="num_tables", clause="6.3.5"),
    ),
    "freq_table": (
        Element("alphabet_size", "u16", clause="6.3.5"),
        Element("freq_k", "u8", clause="6.3.5"),
        Element("freq", "eg(freq_k)", count="alphabet_size", clause="6.3.5"),
        Element("alignment_zero_bits", "align", clause="3.3"),
    ),
    "frame": (
        Element("tps_id", "u8", clause="6.4"),
        Element("random_access", "u8", clause="6.4"),
        Element("frame_number", "u32", clause="6.4"),
        Element("num_tokens", "u32", clause="6.4"),
        Element("presence_present", "u8", clause="6.4"),
        Element("presence_map", "payload presence_map()", condition="presence_present",
                clause="7.2"),
        Element("merge_map", "payload merge_map()", condition="presence_present == 2",
                clause="7.8"),
        Element("frame_step_delta", "i8", condition="coding_mode != 1", clause="6.4"),
        Element("token_scale_present", "u8", condition="coding_mode != 1", clause="6.4"),
        Element("token_step_delta", "i8", count="num_kept",
                condition="coding_mode != 1 and token_scale_present",
                clause="6.4"),
        Element("escape_bits", "u8", condition="coding_mode != 1", clause="6.4"),
        Element("num_escapes", "u32", condition="coding_mode != 1", clause="6.4"),
        Element("chunk_words", "u32", count="num_chunks", clause="6.4"),
        Element("rans_data", "payload rans_data()", clause="7.3"),
        Element("escape_data", "payload escape_data()", condition="coding_mode != 1",
                clause="7.4"),
        Element("raw_data", "payload raw_data()", condition="coding_mode == 1", clause="7.4"),
    ),
    "metadata": (
        Element("num_entries", "u16", clause="6.5"),
        Element("metadata_entry", "metadata_entry()", count="num_entries", clause="6.5"),
    ),
    "metadata_entry": (
        Element("key_length", "u8", clause="6.5"),
        Element("key", "bytes", count="key_length", clause="6.5"),
        Element("value_length", "u32", clause="6.5"),
        Element("value", "bytes", count="value_length", clause="6.5"),
    ),
    "index": (
        Element("num_entries", "u32", clause="6.6"),
        Element("index_entry", "index_entry()", count="num_entries", clause="6.6"),
    ),
    "index_entry": (
        Element("frame_number", "u32", clause="6.6"),
        Element("unit_offset", "u64", clause="6.6"),
    ),
    "transform": (
        Element("transform_id", "u8", clause="6.7"),
        Element("transform_source", "u8", clause="6.7"),
        Element("transform_digest", "bytes", count="32", condition="transform_source == 1",
                clause="6.7"),
        Element("transform_data", "transform_data()", condition="transform_source == 0",
                clause="6.7"),
    ),
    "transform_data": (
        Element("num_channels", "u32", clause="6.7"),
        Element("num_coeffs", "u32", clause="6.7"),
        Element("coeff_frac_bits", "u8", clause="6.7"),
        Element("basis_frac_bits", "u8", clause="6.7"),
        Element("mean_bits", "u8", clause="6.7"),
        Element("basis_bits", "u8", clause="6.7"),
        Element("mean", "sb(mean_bits)", count="num_channels", condition="mean_bits > 0",
                clause="6.7"),
        Element("basis", "sb(basis_bits)", count="num_coeffs * num_channels", clause="6.7"),
        Element("alignment_zero_bits", "align", clause="3.3"),
    ),
}

FIXED_SIZE = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "i8": 1}


_CODE: dict = {}      # expression -> its compiled code (compiled once, not at every use)


def _eval(expr: str, env: dict):
    # the expressions are this module's own constants, never stream content
    code = _CODE.get(expr)
    if code is None:
        code = _CODE[expr] = compile(expr, "<syntax>", "eval")
    return eval(code, {"__builtins__": {}}, env)  # noqa: S307


def parse(reader: BitReader, name: str, context: dict | None = None,
          payload_parsers: dict | None = None, prefix: str = "",
          check=None) -> MappingProxyType:
    """Parse structure ``name``; returns an immutable mapping element -> value.

    ``payload_parsers`` maps a payload name to ``f(reader, env) -> value`` for the
    prose-specified parts (clause 7).  Arrays of fixed-width elements come back as
    numpy arrays, nested loops as tuples of mappings.  ``check(name, value, env)``
    is called after every element, before any later element is read, so that
    the decoder can bound a value before it is used as a size (clause 7.1).
    """
    env = dict(context or {})
    out = {}
    for el in SYNTAX[name]:
        hook = _DERIVED.get((name, el.name))
        if el.condition and not _eval(el.condition, env):
            if hook:
                hook(env)
            continue
        full = f"{prefix}{el.name}"
        d = el.descriptor
        count = _eval(el.count, env) if el.count else None
        if d in FIXED_SIZE:
            if count is None:
                v = reader.fixed(d, full)
            else:
                _check_count(reader, count * FIXED_SIZE[d], full)
                v = reader.array(d, count, full)
        elif d.startswith("eg("):
            k = _eval(d[3:-1], env)
            v = tuple(reader.eg(k, f"{full}[{i}]") for i in range(count))
        elif d.startswith("sb("):
            n = _eval(d[3:-1], env)
            _check_bits(reader, count * n, full)
            u = reader.packed(count, n, full).astype(np.int64)
            v = np.where(u >= 1 << (n - 1), u - (1 << n), u) if n else u
        elif d == "bytes":
            v = reader.raw_bytes(count, full)
        elif d == "align":
            reader.align_zero(full)
            continue
        elif d.startswith("payload "):
            v = payload_parsers[d[8:-2]](reader, env)
        else:  # nested structure
            sub = d[:-2]
            if count is None:
                v = parse(reader, sub, env, payload_parsers, f"{full}.", check)
            else:
                v = tuple(parse(reader, sub, env, payload_parsers, f"{full}[{i}].", check)
                          for i in range(count))
        out[el.name] = v
        env[el.name] = v
        if check is not None:
            check(el.name, v, env)
        if hook:
            hook(env)
    return MappingProxyType(out)


def _check_bits(reader: BitReader, nbits: int, name: str) -> None:
    # packed signed arrays: bounded by the bits present before allocating (spec 7.1)
    if nbits > reader.remaining_bits():
        from .errors import TKBTruncatedError
        raise TKBTruncatedError(f"{name} needs {nbits} bits, {reader.remaining_bits()} remain",
                                clause="7.1", element=name, offset=reader.byte_pos)


def _check_count(reader: BitReader, nbytes: int, name: str) -> None:
    # checked before any array is allocated (clause 4 of the brief, spec 7.1)
    if nbytes > reader.remaining_bytes():
        from .errors import TKBTruncatedError
        raise TKBTruncatedError(f"{name} needs {nbytes} bytes, {reader.remaining_bytes()} remain",
                                clause="7.1", element=name, offset=reader.byte_pos)


def _frame_sizes(env: dict) -> None:
    """Derived variables of clause 7.1, set once the presence map is known."""
    kept = env.get("presence_map")
    env["num_kept"] = env["num_tokens"] if kept is None else len(kept)
    env["num_symbols"] = env["num_kept"] * env["num_coded"]
    env["num_chunks"] = -(-env["num_symbols"] // env["chunk_size"])


def _coded_channels(env: dict) -> None:
    """num_coded (clause 6.3): the values coded per token, the coefficients of the
    parameter set's transform (``coding_mode`` 2) or the channels; a writer may give it."""
    if "num_coded" in env:
        return
    t = env.get("transforms", {}).get(env.get("transform_id")) if env["coding_mode"] == 2 \
        else None
    env["num_coded"] = t.num_coeffs if t is not None else env["num_channels"]


# Values derived while parsing a structure, available to later conditions and counts;
# each hook runs after its element is read or found absent.
_DERIVED = {("frame", "presence_map"): _frame_sizes,
            ("track_parameter_set", "transform_id"): _coded_channels}
# the derived values a writer needs and may not give (a frame writer gives its sizes)
_WRITE_DERIVED = {("track_parameter_set", "transform_id"): _coded_channels}


def write(writer: BitWriter, name: str, values: dict, context: dict | None = None,
          payload_writers: dict | None = None) -> None:
    """Serialise structure ``name`` from ``values`` (the encoder's mirror of :func:`parse`)."""
    env = dict(context or {})
    env.update(values)
    for el in SYNTAX[name]:
        if (name, el.name) in _WRITE_DERIVED:
            _WRITE_DERIVED[(name, el.name)](env)
        if el.condition and not _eval(el.condition, env):
            continue
        d = el.descriptor
        count = _eval(el.count, env) if el.count else None
        v = values.get(el.name)
        if d in FIXED_SIZE:
            if count is None:
                writer.fixed(d, v, el.name)
            else:
                if len(v) != count:
                    raise AssertionError(f"{el.name}: {len(v)} values, syntax wants {count}")
                writer.array(d, v, el.name)
        elif d.startswith("eg("):
            writer.eg_array(_eval(d[3:-1], env), v)
        elif d.startswith("sb("):
            n = _eval(d[3:-1], env)
            writer.packed(np.asarray(v, dtype=np.int64).astype(np.uint64)
                          & np.uint64((1 << n) - 1), n)
        elif d == "bytes":
            writer.raw_bytes(v)
        elif d == "align":
            writer.align_zero()
        elif d.startswith("payload "):
            payload_writers[d[8:-2]](writer, env)
        else:
            sub = d[:-2]
            for item in ([v] if count is None else v):
                write(writer, sub, item, env, payload_writers)


def markdown_table(name: str) -> str:
    """The syntax table of structure ``name`` as printed in spec/5-syntax.md."""
    rows = ["| syntax element | descriptor | count | present when | semantics |",
            "|---|---|---|---|---|"]
    for el in SYNTAX[name]:
        rows.append(f"| `{el.name}` | `{el.descriptor}` | {f'`{el.count}`' if el.count else ''}"
                    f" | {f'`{el.condition}`' if el.condition else ''} | {el.clause} |")
    return "\n".join(rows)


def all_tables_markdown() -> str:
    return "\n\n".join(f"<!-- syntax:{n} -->\n{markdown_table(n)}\n<!-- /syntax -->"
                       for n in SYNTAX)


if __name__ == "__main__":
    print(all_tables_markdown())
