"""A command-line decoder following the contract of tokenbits.conformance.adapters,
built on tokenbits; ``--mode`` makes it misbehave for the harness tests.

    python tests/conformance_decoder.py [--strict] [--mode MODE] INPUT [OUTPUT]

Without OUTPUT the canonical output goes to standard output.  Modes: ok (default),
flip-bit, accept-crc, wrong-class, no-class, hang, crash, exit2, unsupported.
"""
import argparse
import os
import sys
import time

MODES = ("ok", "flip-bit", "accept-crc", "wrong-class", "no-class", "hang", "crash", "exit2",
         "unsupported")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output", nargs="?")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--mode", choices=MODES, default="ok")
    a = p.parse_args()
    if a.mode == "hang":
        time.sleep(600)
    if a.mode == "crash":
        os.abort()
    if a.mode == "exit2":
        print("conformance_decoder: something went wrong", file=sys.stderr)
        return 2
    if a.mode == "unsupported":
        print("conformance_decoder: not implemented here", file=sys.stderr)
        return 4

    import tokenbits as tb
    data = open(a.input, "rb").read()
    if a.mode == "accept-crc":
        from conformance_broken import fix_crcs
        data = fix_crcs(data)
    canonical, errors, rejected = b"", [], False
    try:
        s = tb.decode(data, strict=a.strict, backend="reference")
        canonical, errors = tb.canonical_bytes(s), list(s.errors)
    except tb.TKBError as e:
        errors, rejected = [e], True
    if a.mode == "flip-bit" and canonical:
        canonical = canonical[:-1] + bytes([canonical[-1] ^ 1])
    for e in errors:
        if a.mode == "no-class":
            print(f"error: {e}", file=sys.stderr)
        elif a.mode == "wrong-class":
            print(f"TKBFormatError: {e}", file=sys.stderr)
        else:
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
    if a.output:
        with open(a.output, "wb") as f:
            f.write(canonical)
    else:
        sys.stdout.buffer.write(canonical)
    if not errors:
        return 0
    return 1 if rejected or not canonical else 3


if __name__ == "__main__":
    sys.exit(main())
