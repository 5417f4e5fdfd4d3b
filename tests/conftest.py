"""Test configuration.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is
set here, before test modules import the kernels (see shared/TRITON-NOTES.md),
unless TKB_TEST_DEVICE=cuda asks for the kernel tests to run on a GPU.
"""
import os

# TKB_TEST_DEVICE=cuda runs the kernel tests on a GPU instead (a recorded GPU run)
if os.environ.get("TKB_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
