"""kernels/sass_stats.py: the transform kernels compiled for sm_90 on this GPU-less
machine (Triton's ahead-of-time compiler and its cuobjdump), registers and spills read
from the cubins.  The default launch of one- and two-limb tiles and the fused levels
kernel must not spill; the four-limb launch, which needs twice the accumulators, shows
that the count sees spills where there are some."""
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")


def test_default_transform_launches_compile_for_sm90_without_spills():
    from pathlib import Path
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip("this Triton has no CUDA backend tools")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-P", "-m", "tokenbits.kernels.sass_stats", "--json",
                        "-"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    from tokenbits.kernels.sass_stats import inverse_name
    from tokenbits.kernels.transform import TRANSFORM_VARIANT as V
    default = inverse_name("default", V["F64"], V["KEXT"], False, V.get("HORNER", False))
    for name in (default, "levels_limbs default"):
        assert res[name]["stack_bytes"] == 0, (name, res[name])
        assert 0 < res[name]["registers"] <= 255
    assert res["inverse default F64"]["registers"] < res["inverse default"]["registers"]
    assert res["inverse default high"]["stack_bytes"] > 0


def test_sass_stats_refuses_interpreted_kernels():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-P", "-m", "tokenbits.kernels.sass_stats"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unset TRITON_INTERPRET" in r.stderr


def _tools_or_skip():
    from pathlib import Path
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this Triton has no CUDA backend tools")
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_kernels_compile_with_each_integer_argument_equal_to_one():
    """A launch passes an integer argument equal to 1 to the compiler as a constant (a
    batch of one decoded row: R = 1); ``R.to(tl.int64)`` then failed to compile, on the
    GPU only (the interpreter never specialises).  Every integer argument of the
    transform and similarity kernels, set to 1 in turn, compiles for sm_90."""
    env = _tools_or_skip()
    r = subprocess.run([sys.executable, "-P", "-m", "tokenbits.kernels.sass_stats", "--ones"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    done = [line for line in r.stdout.splitlines() if line.endswith(": compiles")]
    assert len(done) >= 30 and any(line.startswith("inverse HORNER   R = 1") for line in done)


def test_ones_reports_a_kernel_that_calls_a_method_of_an_argument(tmp_path):
    """The check of the test above fails where it should: a kernel with ``R.to(...)``
    fails for R = 1 only."""
    env = _tools_or_skip()
    (tmp_path / "bad_kernel.py").write_text(
        "import triton\nimport triton.language as tl\n\n\n@triton.jit\n"
        "def k(p_ptr, R, N):\n    tl.store(p_ptr + R.to(tl.int64) * N, 1)\n")
    code = ("import bad_kernel, json\nfrom tokenbits.kernels import sass_stats as s\n"
            "print(json.dumps(s.ones([('bad', bad_kernel.k, dict(p_ptr='*i32', R='i32', "
            "N='i32'), {}, 1)])))")
    r = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(tmp_path)),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = {arg: err for _, arg, err in json.loads(r.stdout.splitlines()[-1])}
    assert res["N"] is None and res["R"] and "Error" in res["R"]
