"""The source tree never shadows installed packages (issue 14).

The folders kernels/, reference/ and conformance/ are installed as tokenbits.kernels,
tokenbits and tokenbits.conformance. As top-level names they belong to other projects:
transformers imports the `kernels` package of the package index. Whoever puts the
repository root first on sys.path (`python -m pytest`, or any `python -m` / `python -c`
run from the root without -P) imports this repository's folder instead. The test
command and the Makefile's recipes must not do that.
"""
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("kernels", "reference", "conformance")
TARGETS = ("demo", "test", "test-latest", "constraints", "bench", "fuzz", "conformance",
           "syntax", "clean")

# What `import kernels` resolves to, then transformers' hub-kernels integration (the
# import that failed in CI while kernels/ was shadowed).
PROBE = """
import importlib.util
spec = importlib.util.find_spec("kernels")
print(spec.origin if spec else "absent")
if spec is not None and importlib.util.find_spec("transformers") is not None:
    import transformers.integrations.hub_kernels
"""


def _in_source_folder(origin) -> bool:
    # the venv may live inside the repository: 'inside REPO' alone proves nothing
    path = Path(origin).resolve()
    return any(path.is_relative_to(REPO / name) for name in SOURCE_FOLDERS)


def test_repository_root_comes_after_site_packages_in_the_test_run():
    entries = [Path(p or os.getcwd()).resolve() for p in sys.path]
    sites = {Path(p).resolve() for p in site.getsitepackages()}
    first_site = min(i for i, p in enumerate(entries) if p in sites)
    assert REPO not in entries[:first_site], f"{REPO} precedes site-packages: {sys.path}"


def test_kernels_does_not_resolve_to_the_source_folder():
    spec = importlib.util.find_spec("kernels")
    assert spec is None or not _in_source_folder(spec.origin), spec.origin


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_every_makefile_recipe_keeps_the_root_off_the_front_of_sys_path():
    """`python -m` and `python -c` in a recipe carry -P; pytest runs as its script."""
    r = subprocess.run(["make", "-n", "-B", *TARGETS], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pythons = 0
    for line in r.stdout.splitlines():
        for m in re.finditer(r"(?:^|\s)(\S*python[0-9.]*)((?:\s+-[A-Za-z]+)*)", line):
            flags = m.group(2).split()
            pythons += 1
            if {"-m", "-c"} & set(flags):
                assert "-P" in flags, f"recipe line without -P: {line}"
            assert not re.search(r"-m\s+pytest", line), f"use the pytest script: {line}"
    assert pythons >= 3, r.stdout   # the recipes were read


def _probe_from_root(flags):
    r = subprocess.run([sys.executable, *flags, "-c", PROBE], cwd=REPO, capture_output=True,
                       text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"})
    return r.returncode, r.stdout.strip().splitlines(), r.stderr


def test_python_dash_p_from_the_root_imports_the_installed_kernels():
    rc, out, err = _probe_from_root(["-P"])
    assert rc == 0, err
    assert out and (out[0] == "absent" or not _in_source_folder(out[0])), out


def test_without_dash_p_the_root_does_shadow_kernels():
    """The control: the hazard that -P prevents is real, so the checks above can fail."""
    rc, out, err = _probe_from_root([])
    assert out and Path(out[0]).resolve() == REPO / "kernels" / "__init__.py", (out, err)
