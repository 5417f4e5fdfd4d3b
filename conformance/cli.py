"""``tkb conformance``: run decoders on the conformance suite (spec clause 11).

Subcommands::

    tkb conformance list   [--suite DIR] [filters] [--json [FILE]]
    tkb conformance run    [--decoder SPEC] [--strict-decoder] [--suite DIR] [filters]
                           [-j N] [--timeout S] [--json FILE] [--junit FILE]
                           [--coverage] [-q]
    tkb conformance matrix [--encoder SPEC]... [--decoder SPEC]... [--input GLOB]...
                           [-j N] [--timeout S] [--json FILE] [-q]
    tkb conformance reference [...]      regenerate the suite (tokenbits.conformance.generate)

Filters: ``--profile Lossless|Main``, ``--level 10|20|30`` (1|2|3), ``--suite-kind
positive|negative|resilience`` (repeatable), ``--stream GLOB`` (repeatable).
Decoder specifications and the command-line decoder contract: see
:mod:`tokenbits.conformance.adapters`.

Exit status: 0 nothing failed; 1 some stream (or matrix cell) failed, errored or
timed out; 2 bad usage (one line on stderr: ``tkb conformance: error: ...``).
"""
from __future__ import annotations

import argparse
import sys

from .adapters import DEFAULT_TIMEOUT, AdapterError, default_jobs, make_decoder

PROG = "tkb conformance"
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A usage error: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _err(msg) -> None:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return x


def _level(text: str) -> int:
    from .harness import parse_level
    try:
        return parse_level(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _profile(text: str) -> str:
    from .harness import parse_profile
    try:
        return parse_profile(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _filters(p) -> None:
    p.add_argument("--suite", metavar="DIR", help="suite directory (default: the package's)")
    p.add_argument("--profile", type=_profile, metavar="P",
                   help="claimed profile: Lossless or Main (streams of other profiles are "
                        "'not supported')")
    p.add_argument("--level", type=_level, metavar="L",
                   help="claimed level: 10, 20, 30 (or 1, 2, 3)")
    p.add_argument("--suite-kind", dest="kinds", action="append",
                   choices=("positive", "negative", "resilience"),
                   help="only streams of this kind (repeatable)")
    p.add_argument("--stream", dest="globs", action="append", metavar="GLOB",
                   help="only streams whose name matches GLOB (repeatable)")


def _run_opts(p) -> None:
    p.add_argument("-j", "--jobs", type=_positive_int, metavar="N",
                   help=f"streams decoded in parallel (default: CPU count, {default_jobs()})")
    p.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"per-stream time limit in seconds (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run decoders on the TKB conformance suite.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    ls = sub.add_parser("list", help="list the suite: kinds, streams, features",
                        description="List the streams of a suite (with the filters of run; "
                                    "streams outside a claimed profile/level are counted, "
                                    "not listed).")
    _filters(ls)
    ls.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="machine-readable listing (to FILE, or standard output)")
    ls.set_defaults(func=cmd_list)

    r = sub.add_parser("run", help="run a decoder on the suite",
                       description="Decode every selected stream with one decoder and judge "
                                   "it (pass / fail / error / timeout / not-supported).")
    r.add_argument("--decoder", default="reference", metavar="SPEC",
                   help="reference, reference-strict, gpu, native, native-cmd, module:attr, or a command "
                        "template: 'cmd:mydec {input} {output}' (default: reference)")
    r.add_argument("--strict-decoder", action="store_true",
                   help="the decoder stops at the first error: resilience streams are "
                        "'not supported' for it")
    r.add_argument("--name", help="the decoder's name in reports")
    _filters(r)
    _run_opts(r)
    r.add_argument("--json", metavar="FILE", help="write every result as JSON ('-': stdout)")
    r.add_argument("--junit", metavar="FILE", help="write JUnit XML")
    r.add_argument("--coverage", action="store_true",
                   help="print what of the manifest's universe the passing streams cover")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("matrix", help="interop matrix: encoders x decoders",
                       description="Encode the same inputs with every encoder, decode every "
                                   "stream with every decoder, check each cell against the "
                                   "reference decoder.")
    m.add_argument("--encoder", dest="encoders", action="append", metavar="SPEC",
                   help="reference, gpu, module:attr, or 'cmd:... {input} {output} {flags}' "
                        "(repeatable; default: reference)")
    m.add_argument("--decoder", dest="decoders", action="append", metavar="SPEC",
                   help="as for run (repeatable; default: reference)")
    m.add_argument("--strict-decoder", action="store_true",
                   help="every --decoder stops at the first error (only valid streams "
                        "are decoded here, so this changes nothing but reports)")
    m.add_argument("--input", dest="input_globs", action="append", metavar="GLOB",
                   help="only inputs whose name matches GLOB (repeatable)")
    _run_opts(m)
    m.add_argument("--json", metavar="FILE", help="write the matrix as JSON ('-': stdout)")
    m.set_defaults(func=cmd_matrix)

    g = sub.add_parser("reference", help="regenerate the suite (tokenbits.conformance.generate)",
                       add_help=False)
    g.add_argument("args", nargs=argparse.REMAINDER)
    g.set_defaults(func=cmd_reference)
    return p


def _check_out(*paths) -> None:
    """Output files must be writable before a long run starts."""
    import os
    for p in paths:
        if not p or p == "-":
            continue
        parent = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(parent):
            raise UsageError(f"{p}: directory {parent} does not exist")
        if os.path.isdir(p):
            raise UsageError(f"{p}: is a directory")


def _suite(a):
    from .harness import SuiteError, load_suite
    try:
        return load_suite(a.suite)
    except SuiteError as e:
        raise UsageError(str(e)) from None


def cmd_list(a) -> int:
    from .harness import list_info, render_list, write_json
    _check_out(a.json)
    info = list_info(_suite(a), a.profile, a.level, a.kinds, a.globs)
    if a.json:
        write_json(a.json, info)
        if a.json == "-":
            return EXIT_OK
    print(render_list(info))
    return EXIT_OK


def _decoder(spec: str, strict: bool, name=None):
    try:
        return make_decoder(spec, strict, name)
    except AdapterError as e:
        raise UsageError(str(e)) from None


def cmd_run(a) -> int:
    from .harness import junit_xml, render_coverage, render_table, run_suite, write_json
    _check_out(a.json, a.junit)
    suite = _suite(a)
    dec = _decoder(a.decoder, a.strict_decoder, a.name)
    why = dec.unavailable()
    if why:
        print(f"{PROG}: decoder {dec.name} cannot run here: {why}; every stream is "
              "reported 'not supported'", file=sys.stderr)
    rep = run_suite(dec, suite, a.profile, a.level, a.kinds, a.globs, a.jobs, a.timeout,
                    quiet=a.quiet)
    if a.json != "-":
        print(render_table(rep))
        if a.coverage:
            print()
            print(render_coverage(rep.coverage()))
    if a.json:
        write_json(a.json, rep.to_json())
    if a.junit:
        with open(a.junit, "wb") as f:
            f.write(junit_xml(rep))
    return rep.exit_status


def cmd_matrix(a) -> int:
    import fnmatch
    from .harness import Encoder, matrix_inputs, run_matrix, write_json
    _check_out(a.json)
    try:
        encoders = [Encoder(s, a.timeout) for s in (a.encoders or ["reference"])]
    except AdapterError as e:
        raise UsageError(str(e)) from None
    decoders = [_decoder(s, a.strict_decoder) for s in (a.decoders or ["reference"])]
    inputs = matrix_inputs()
    if a.input_globs:
        inputs = [x for x in inputs if any(fnmatch.fnmatchcase(x[0], g) for g in a.input_globs)]
        if not inputs:
            raise UsageError(f"no matrix input matches {', '.join(a.input_globs)}")
    try:
        rep = run_matrix(encoders, decoders, inputs, a.jobs, a.timeout, a.quiet)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if a.json != "-":
        print(rep.render())
    if a.json:
        write_json(a.json, rep.to_json())
    return rep.exit_status


def cmd_reference(a) -> int:
    from . import generate
    rc = generate.main(list(a.args))
    return rc if isinstance(rc, int) else EXIT_OK


def main(argv=None) -> int:
    """Entry point of ``tkb conformance``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "reference":      # its options are generate's own
            return cmd_reference(argparse.Namespace(args=argv[1:]))
        a = build_parser().parse_args(argv)
        return a.func(a)
    except UsageError as e:
        _err(e)
        return EXIT_USAGE
    except SystemExit as e:      # --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        from .adapters import kill_workers
        kill_workers()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
