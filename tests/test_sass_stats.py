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
