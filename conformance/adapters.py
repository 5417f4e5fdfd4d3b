"""Decoders that the conformance harness can run (spec clause 11).

A decoder's result on one stream is a :class:`DecodeResult`: its canonical output
(clause 10.1; ``None`` when it wrote nothing), the error classes it reported, in
the order found (clause 9.0: e.g. ``["TKBCRCError"]``), and free text.

Decoder specifications (``--decoder SPEC``):

* ``reference`` - the reference decoder (numpy), resilient (clause 9.10);
* ``reference-strict`` - the reference decoder stopping at the first error;
* ``gpu`` - the reference decoding through the GPU kernels; "not supported"
  for every stream where no GPU can run them;
* ``native`` - libtkb, the C decoder (``native/``), through its Python binding,
  resilient; ``native-cmd`` - its command ``tkbdec`` under the command-line contract
  below (with ``{dense}``); both "not supported" where libtkb is not built;
* ``module:attr`` or ``path/to/file.py:attr`` - a Python adapter: ``attr`` is a
  callable ``decode(data: bytes) -> (canonical: bytes | None, errors: list)``,
  or a class or object with such a ``decode`` method; optional attributes
  ``resilient`` (bool, default True) and ``name``.  ``errors`` items are class
  names, exception instances or exception classes.  ``decode`` may raise
  :class:`NotSupported` (or any exception class named ``NotSupported``) for a
  stream it does not implement; any other exception is the state "error".
* ``cmd:TEMPLATE``, or any TEMPLATE containing ``{input}`` - a command-line
  decoder, in any language, under the contract below.
* a ``strict:`` prefix on any of these (``strict:cmd:mydec {input}``), or the
  option ``--strict-decoder``, declares a decoder strict (it stops at the first
  error): resilience streams are then "not supported" for it.

Python adapters run in worker processes (``spawn``), so that a per-stream
timeout can kill them and a GPU context is never inherited.

Command-line decoder contract
-----------------------------

The template is split like a shell command line (no shell is involved), and
``{input}`` / ``{output}`` are replaced in every word::

    tkb conformance run --decoder "cmd:mydec --resilient {input} {output}"

1. ``{input}`` is the path of the ``.tkb`` stream to decode.  ``{output}`` is the
   path of a file the program writes the canonical output to (clause 10.1: the
   frame records of the frames it decoded, in stream order).  When the template
   has no ``{output}``, the canonical output is read from standard output.
2. The program decodes resiliently as far as it can (clause 9.10): it reports an
   error, discards the unit, and continues with the next one; after a fatal
   error it stops.  It writes the canonical output of the frames it decoded
   (possibly empty).  A strict decoder stops at the first error; declare it with
   ``--strict-decoder`` or the ``strict:`` prefix.
3. Every error it reports goes to standard error, one per line; each line
   contains the error class name (a match of ``TKB[A-Za-z]+Error``; the first
   match of a line counts; lines without one are ignored).  The order of the
   lines is the order in which the errors were found (clause 9.0).
4. Exit status: 0 - no error (standard error is then not searched for errors);
   1 or 3 - errors reported (1: the stream was rejected, 3: damaged units were
   skipped); 4 - the stream uses something this decoder does not implement
   ("not supported"); anything else (a crash, a signal, 2, 127, ...) is the
   state "error".  An exit status of 1 or 3 without any error class on standard
   error counts as one error of unknown class ("no error class reported"),
   which fails a negative stream's class check.
5. A decoder that runs longer than the per-stream timeout (``--timeout``,
   default 60 s) is killed, with its whole process group: state "timeout".

The program runs with standard input closed (``/dev/null``), in a fresh process
group, in the current directory.

Transforms by reference (version 1.1, clause 6.7): every decoder, command or Python,
runs with the environment variable ``TKB_TRANSFORM_DIR`` set to the suite's
``transforms/`` folder, which holds each transform that a stream names by SHA-256 as
``<sha256 in lowercase hex>.tkbt`` (a TKB stream of the High profile with one inline
transform unit; its ``transform_data()`` bytes are what the digest covers).  A decoder
looks a needed digest up there; the manifest lists the digests each stream needs
(``"transforms"``).  ``tkb decode`` reads the variable when no ``--transform`` is given.

Dense output (version 1.1, clauses 7.8 and 10.4): a command template may contain
``{dense}``.  The harness removes it (a word that is exactly ``{dense}`` is dropped)
for the canonical output, and runs the decoder a second time on each positive stream
with a dense digest in the manifest (``dense_canonical_sha256``) with ``{dense}``
replaced by ``--dense``; the program then writes the dense canonical output of
clause 10.4.  A Python adapter whose ``decode`` takes a keyword ``dense`` is called
with ``dense=True`` for that second run.  ``cmd:tkb decode {input} --canonical -o
{output} {dense}`` is the reference decoder under this contract.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ERROR_CLASS_RE = re.compile(r"TKB[A-Za-z]+Error")
#: an error reported without a class (a command's exit 1/3 with no class on stderr)
UNKNOWN_ERROR = "?"
DEFAULT_TIMEOUT = 60.0
#: exit statuses of a command-line decoder (contract, point 4)
EXIT_OK, EXIT_ERRORS, EXIT_PARTIAL, EXIT_NOT_SUPPORTED = 0, 1, 3, 4
REGISTERED = ("reference", "reference-strict", "gpu", "native", "native-cmd")


class NotSupported(Exception):
    """Raised by an adapter for a stream (or a feature) it does not implement."""


class AdapterError(ValueError):
    """A decoder specification that cannot be used (a usage error)."""


@dataclass
class DecodeResult:
    """What a decoder produced for one stream."""
    canonical: bytes | None
    errors: list = field(default_factory=list)
    detail: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical or b"").hexdigest()


@dataclass
class Outcome:
    """How running a decoder on one stream went.  ``state``: "done" (``result``
    holds what it decoded), "not-supported", "error" or "timeout"."""
    state: str
    result: DecodeResult | None = None
    seconds: float = 0.0
    message: str = ""


def error_names(errors) -> list:
    """Error class names from class names, exception instances or classes."""
    out = []
    for e in errors or []:
        if isinstance(e, str):
            m = ERROR_CLASS_RE.search(e)
            out.append(m.group(0) if m else (e or UNKNOWN_ERROR))
        elif isinstance(e, type):
            out.append(e.__name__)
        elif isinstance(e, BaseException):
            out.append(type(e).__name__)
        else:
            raise TypeError(f"an error must be a class name, an exception or an exception "
                            f"class, not {type(e).__name__}")
    return out


def normalize(ret) -> DecodeResult:
    """A Python adapter's return value as a DecodeResult."""
    if isinstance(ret, DecodeResult):
        res = ret
    elif isinstance(ret, tuple) and len(ret) in (2, 3):
        res = DecodeResult(*ret)
    else:
        raise TypeError(f"decode() returned {type(ret).__name__}; expected a tuple "
                        "(canonical: bytes, errors: list)")
    canonical = res.canonical
    if canonical is not None and not isinstance(canonical, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode() returned canonical output of type "
                        f"{type(canonical).__name__}; expected bytes")
    details = [str(e) for e in res.errors or [] if isinstance(e, BaseException)]
    return DecodeResult(None if canonical is None else bytes(canonical),
                        error_names(res.errors), res.detail or "\n".join(details))


# -- the registered Python adapters ---------------------------------------------------

TRANSFORM_DIR_ENV = "TKB_TRANSFORM_DIR"


def supplied_transforms() -> list:
    """The .tkbt files of the folder that TKB_TRANSFORM_DIR names (none when unset)."""
    d = os.environ.get(TRANSFORM_DIR_ENV)
    return sorted(Path(d).glob("*.tkbt")) if d and Path(d).is_dir() else []


def _reference_decode(data: bytes, strict: bool, backend: str,
                      dense: bool = False) -> DecodeResult:
    import tokenbits
    from tokenbits.errors import TKBBackendError
    try:
        stream = tokenbits.decode(data, strict=strict, backend=backend,
                                  transforms=supplied_transforms(), dense=dense)
    except TKBBackendError as e:
        raise NotSupported(str(e)) from None
    except tokenbits.TKBError as e:   # strict: the first error; else a stream header error
        return DecodeResult(b"", [type(e).__name__], str(e))
    return DecodeResult(tokenbits.canonical_bytes(stream),
                        [type(e).__name__ for e in stream.errors],
                        "\n".join(str(e) for e in stream.errors))


def decode_reference(data: bytes, dense: bool = False) -> DecodeResult:
    """The reference decoder, resilient (clause 9.10); ``dense``: the dense canonical
    output (clause 10.4)."""
    return _reference_decode(data, False, "reference", dense)


def decode_reference_strict(data: bytes, dense: bool = False) -> DecodeResult:
    """The reference decoder, stopping at the first error."""
    return _reference_decode(data, True, "reference", dense)


def decode_gpu(data: bytes, dense: bool = False) -> DecodeResult:
    """The reference decoding through the GPU kernels, resilient."""
    return _reference_decode(data, False, "gpu", dense)


def decode_native(data: bytes, dense: bool = False) -> DecodeResult:
    """libtkb (the C decoder of native/) through its binding, resilient (clause 9.10)."""
    return _reference_decode(data, False, "native", dense)


def native_unavailable() -> str | None:
    """Why libtkb cannot run here (None when it can)."""
    try:
        from tokenbits import native
        return native.available()
    except Exception as e:
        return f"the native backend cannot be loaded: {type(e).__name__}: {e}"


def takes_dense(fn) -> bool:
    """Whether a Python adapter's decode function accepts the keyword ``dense``."""
    import inspect
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "dense" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


decode_reference_strict.resilient = False


def gpu_unavailable() -> str | None:
    """Why the GPU backend cannot run here (None when it can)."""
    from tokenbits.errors import TKBBackendError
    try:
        from tokenbits.kernels import dispatch
        dispatch.choose("gpu")
    except TKBBackendError as e:
        return str(e)
    except Exception as e:  # a broken torch / triton install
        return f"the GPU backend cannot run: {type(e).__name__}: {e}"
    return None


_REGISTERED_FUNCS = {"reference": decode_reference, "reference-strict": decode_reference_strict,
                     "gpu": decode_gpu, "native": decode_native}


# -- loading Python adapters ------------------------------------------------------------

_PY_SPEC_RE = re.compile(r"^(?P<mod>[A-Za-z_][\w.]*|.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")


def _import_target(module: str):
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise AdapterError(f"{module}: no such file")
        name = "_tkb_adapter_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())   # like python -m: modules of the current directory
    return importlib.import_module(module)


def load_python(spec: str):
    """(decode function, name, resilient) of a registered name or ``module:attr``."""
    if spec in _REGISTERED_FUNCS:
        fn = _REGISTERED_FUNCS[spec]
        return fn, spec, getattr(fn, "resilient", True)
    m = _PY_SPEC_RE.match(spec)
    if not m:
        raise AdapterError(f"{spec!r} is not module:attr")
    try:
        obj = _import_target(m["mod"])
    except AdapterError:
        raise
    except Exception as e:
        raise AdapterError(f"cannot import {m['mod']}: {type(e).__name__}: {e}") from None
    for part in m["attr"].split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AdapterError(f"{spec}: {m['mod']} has no attribute {m['attr']}") from None
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise AdapterError(f"{spec}: cannot instantiate {obj.__name__}(): "
                               f"{type(e).__name__}: {e}") from None
    fn = getattr(obj, "decode", None)
    if not callable(fn):
        fn = obj
    if not callable(fn):
        raise AdapterError(f"{spec}: neither callable nor an object with a decode method")
    name = getattr(obj, "name", None) or getattr(fn, "name", None) or spec
    resilient = getattr(obj, "resilient", getattr(fn, "resilient", True))
    return fn, str(name), bool(resilient)


# -- decoders -------------------------------------------------------------------------

class Decoder:
    """A decoder the harness runs: ``name``, ``kind`` ("python" or "command"),
    ``resilient`` (False: a strict decoder, clause 9.10)."""
    kind = "?"
    dense = False          # produces the dense canonical output (clause 10.4) on request

    def __init__(self, spec: str, name: str, resilient: bool):
        self.spec, self.name, self.resilient = spec, name, resilient

    def unavailable(self) -> str | None:
        """Why this decoder cannot run here at all (every stream "not supported")."""
        return None

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {'resilient' if self.resilient else 'strict'})"

    def runner(self) -> "Runner":
        raise NotImplementedError

    def run_many(self, paths: list, jobs: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT, progress=None) -> list:
        """Outcomes of decoding every path, in order, ``jobs`` at a time."""
        return run_parallel(self, paths, jobs, timeout, progress)


class PythonDecoder(Decoder):
    """A registered adapter or ``module:attr``, run in worker processes."""
    kind = "python"

    def __init__(self, spec: str, strict: bool = False):
        fn, name, resilient = load_python(spec)   # validate now: a usage error if bad
        super().__init__(spec, name, resilient and not strict)
        self.dense = takes_dense(fn)
        self._unavailable = None
        self._checked = False

    def unavailable(self) -> str | None:
        if self.spec in ("gpu", "native") and not self._checked:
            self._unavailable = gpu_unavailable() if self.spec == "gpu" else native_unavailable()
            self._checked = True
        return self._unavailable

    def runner(self) -> "Runner":
        return _WorkerRunner(self.spec)


class CommandDecoder(Decoder):
    """A command-line decoder under the contract of this module's docstring."""
    kind = "command"

    def __init__(self, template: str, strict: bool = False, name: str | None = None):
        try:
            words = shlex.split(template)
        except ValueError as e:
            raise AdapterError(f"decoder command {template!r}: {e}") from None
        if not words:
            raise AdapterError("empty decoder command")
        if not any("{input}" in w for w in words):
            raise AdapterError(f"decoder command {template!r} has no {{input}} placeholder")
        if shutil.which(words[0]) is None:
            raise AdapterError(f"decoder command {template!r}: program {words[0]!r} not found")
        self.words = words
        self.to_stdout = not any("{output}" in w for w in words)
        super().__init__(template, name or template, not strict)
        self.dense = any("{dense}" in w for w in words)

    def argv(self, input_path: str, output_path: str, dense: bool = False) -> list:
        """The command line; ``{dense}``: ``--dense`` when ``dense``, else removed."""
        out = []
        for w in self.words:
            v = w.replace("{input}", input_path).replace("{output}", output_path) \
                .replace("{dense}", "--dense" if dense else "")
            if v or "{dense}" not in w:         # a word that was only {dense}: dropped
                out.append(v)
        return out

    def runner(self) -> "Runner":
        return _CommandRunner(self)


def make_decoder(spec: str, strict: bool = False, name: str | None = None) -> Decoder:
    """The decoder of a specification (see the module docstring); AdapterError if bad."""
    spec = spec.strip()
    if spec.startswith("strict:"):
        spec, strict = spec[len("strict:"):].strip(), True
    if spec == "native-cmd":               # libtkb's command, tkbdec (clause 11.2)
        from tokenbits import native
        exe = native.tkbdec_path()
        if exe is None:
            raise AdapterError(f"native-cmd: tkbdec is not built ({native_unavailable() or 'no tkbdec'})")
        return CommandDecoder(f"{shlex.quote(exe)} {{input}} {{output}} {{dense}}", strict,
                              name or "native-cmd")
    if spec.startswith("cmd:"):
        return CommandDecoder(spec[4:].strip(), strict, name)
    if "{input}" in spec:
        return CommandDecoder(spec, strict, name)
    if spec in REGISTERED or _PY_SPEC_RE.match(spec):
        d = PythonDecoder(spec, strict)
        if name:
            d.name = name
        return d
    raise AdapterError(f"cannot tell what decoder {spec!r} is: give a registered name "
                       f"({', '.join(REGISTERED)}), module:attr, or a command template "
                       "containing {input} (or starting with cmd:)")


# -- running: one runner per parallel slot ------------------------------------------

class Runner:
    """Runs one stream at a time for one slot of the parallel run."""

    def run(self, path: str, timeout: float) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            proc.kill()
        except OSError:
            pass


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _tail(text: str, lines: int = 6, chars: int = 600) -> str:
    t = "\n".join(text.strip().splitlines()[-lines:])
    return t[-chars:]


class _CommandRunner(Runner):
    def __init__(self, decoder: CommandDecoder):
        self.decoder = decoder
        self.tmp = tempfile.TemporaryDirectory(prefix="tkb-conformance-")

    def run(self, path, timeout: float) -> Outcome:
        path, dense = path if isinstance(path, tuple) else (path, False)
        out_path = os.path.join(self.tmp.name, "canonical.bin")
        if os.path.exists(out_path):
            os.unlink(out_path)
        argv = self.decoder.argv(str(path), out_path, dense)
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            return Outcome("error", message=f"cannot run {argv[0]}: {e}")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return Outcome("timeout", seconds=time.perf_counter() - t0,
                           message=f"no result within {timeout:g} s (process group killed)")
        dt = time.perf_counter() - t0
        stderr = err.decode("utf-8", "replace")
        rc = proc.returncode
        if rc == EXIT_NOT_SUPPORTED:
            return Outcome("not-supported", seconds=dt,
                           message=_tail(stderr, 1) or "exit status 4 (not supported)")
        if rc not in (EXIT_OK, EXIT_ERRORS, EXIT_PARTIAL):
            how = f"killed by {_signal_name(-rc)}" if rc < 0 else f"exit status {rc}"
            tail = _tail(stderr)
            return Outcome("error", seconds=dt,
                           message=f"decoder failed ({how})" + (f": {tail}" if tail else ""))
        if self.decoder.to_stdout:
            canonical = out
        else:
            canonical = Path(out_path).read_bytes() if os.path.exists(out_path) else None
        errors = []
        if rc != EXIT_OK:
            for line in stderr.splitlines():
                m = ERROR_CLASS_RE.search(line)
                if m:
                    errors.append(m.group(0))
            if not errors:
                errors = [UNKNOWN_ERROR]
        return Outcome("done", DecodeResult(canonical, errors, _tail(stderr, 20, 4000)), dt)

    def close(self) -> None:
        self.tmp.cleanup()


# Python adapters: one worker process per slot (spawn), replaced when it times out or dies

_LIVE = set()            # worker processes alive, killed on interrupt
_LIVE_LOCK = threading.Lock()


def _worker_main(conn, spec: str, path: list) -> None:
    """Worker process: load the adapter, then decode the paths it is sent."""
    try:
        os.dup2(2, 1)              # an adapter's prints must not mix into the report
    except OSError:
        pass
    for p in path:
        if p not in sys.path:
            sys.path.append(p)
    try:
        fn, _, _ = load_python(spec)
    except BaseException as e:
        conn.send(("fail", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        t0 = time.perf_counter()
        try:
            msg, dense = msg if isinstance(msg, tuple) else (msg, False)
            data = Path(msg).read_bytes()
            t0 = time.perf_counter()
            res = normalize(fn(data, dense=True) if dense else fn(data))
            conn.send(("ok", res.canonical, res.errors, res.detail,
                       time.perf_counter() - t0))
        except BaseException as e:
            if isinstance(e, NotSupported) or type(e).__name__ == "NotSupported":
                conn.send(("unsupported", str(e) or "not supported",
                           time.perf_counter() - t0))
                continue
            tb = traceback.extract_tb(e.__traceback__)
            where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
            conn.send(("error", f"{type(e).__name__}: {e}{where}", time.perf_counter() - t0))


class _WorkerRunner(Runner):
    STARTUP_TIMEOUT = 120.0

    def __init__(self, spec: str):
        self.spec = spec
        self.proc = self.conn = None

    def _start(self) -> str | None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        extra = [os.getcwd()] + [p for p in sys.path if p]
        proc = ctx.Process(target=_worker_main, args=(child, self.spec, extra), daemon=True)
        proc.start()
        child.close()
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self.proc, self.conn = proc, parent
        if not parent.poll(self.STARTUP_TIMEOUT):
            self._kill()
            return f"the worker process did not start within {self.STARTUP_TIMEOUT:g} s"
        try:
            kind, msg = parent.recv()
        except (EOFError, OSError):
            code = proc.exitcode
            self._kill()
            return f"the worker process died while starting (exit code {code})"
        if kind != "ready":
            self._kill()
            return f"the adapter cannot be loaded in the worker: {msg}"
        return None

    def _kill(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
            with _LIVE_LOCK:
                _LIVE.discard(self.proc)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def run(self, path, timeout: float) -> Outcome:
        if self.proc is None:
            why = self._start()
            if why:
                return Outcome("error", message=why)
        t0 = time.perf_counter()
        try:
            self.conn.send((str(path[0]), bool(path[1])) if isinstance(path, tuple)
                           else str(path))
            ready = self.conn.poll(timeout)
        except (OSError, EOFError, BrokenPipeError):
            ready = True       # the worker is gone: recv below says how
        if not ready:
            self._kill()
            return Outcome("timeout", seconds=time.perf_counter() - t0,
                           message=f"no result within {timeout:g} s (worker killed)")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            self._kill()
            how = (f"killed by {_signal_name(-code)}" if code is not None and code < 0
                   else f"exit code {code}")
            return Outcome("error", seconds=time.perf_counter() - t0,
                           message=f"the decoder's worker process died ({how})")
        kind = msg[0]
        if kind == "ok":
            _, canonical, errors, detail, dt = msg
            return Outcome("done", DecodeResult(canonical, errors, detail), dt)
        if kind == "unsupported":
            return Outcome("not-supported", seconds=msg[2], message=msg[1])
        return Outcome("error", seconds=msg[2], message=msg[1])

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(2)
        self._kill()


def kill_workers() -> None:
    """Kill every worker process still alive (after an interrupt)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for p in procs:
        if p.is_alive():
            p.kill()


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_parallel(decoder: Decoder, paths: list, jobs: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT, progress=None) -> list:
    """Outcomes of ``decoder`` on every path (in order), ``jobs`` slots in parallel
    (threads, each driving a worker process or a command).  ``progress()`` is
    called after each stream."""
    results = [None] * len(paths)
    if not paths:
        return results
    jobs = max(1, min(jobs or default_jobs(), len(paths)))
    lock = threading.Lock()
    todo = iter(range(len(paths)))
    stop = threading.Event()

    def slot():
        runner = decoder.runner()
        try:
            while not stop.is_set():
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    results[i] = runner.run(paths[i], timeout)
                except Exception as e:  # the harness must report, never crash
                    results[i] = Outcome("error", message=f"harness: {type(e).__name__}: {e}")
                if progress:
                    progress()
        finally:
            runner.close()

    threads = [threading.Thread(target=slot, daemon=True) for _ in range(jobs)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        stop.set()
        kill_workers()
        raise
    return results
