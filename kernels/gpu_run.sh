#!/bin/sh
# One device run (see BENCHMARKS.md): install the carried wheels and this package,
# run the kernel tests on the GPU, then the GPU benchmark.  Writes under $OUT.
# V11=1: instead, the TKB 1.1 kernels (issues 15 and 16): the pruned-encode bench, the 1.1
# kernel tests and the codec tests on the GPU, conformance on the GPU decoder, then the
# transform decode bench.
set -e
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then     # nvCOMP (baselines only; carried as files)
  python3 -P -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
python3 -P -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/tkb .
export PYTHONPATH=/tmp/tkb:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${V11:-0}" = 1 ]; then
  # the pruned-encode bench first (it checks its bytes against the reference), then the
  # tests and conformance on the GPU, then the transform decode sweep (the longest step)
  # (each step bounded, so that one slow step leaves time for the others in a 600 s call)
  # (ONLY_TRANSFORM=1: the transform sweep alone; SKIP_TRANSFORM=1: all but the sweep;
  # PROFILE=1: then ncu on the transform decode's levels and GEMM launches)
  if [ "${ONLY_TRANSFORM:-0}" != 1 ]; then
    timeout 120 python3 -u -P -m tokenbits.kernels.bench_gpu --data .bench/vit_frames.npy --prune 256 \
        --json "$OUT/prune.json" 2>&1 | tee "$OUT/prune.txt" || true
    TKB_TEST_DEVICE=cuda timeout 180 python3 -u -P -m pytest -q -p no:cacheprovider tests/test_transform_kernel.py \
        tests/test_prune_kernel.py tests/test_pruning.py tests/test_gpu_codec.py > "$OUT/gpu_tests_1_1.txt" 2>&1 || true
    tail -5 "$OUT/gpu_tests_1_1.txt"
    timeout 180 python3 -u -P -m tokenbits.conformance.cli run --decoder gpu -j 8 \
        --json "$OUT/conformance_gpu.json" > "$OUT/conformance_gpu.txt" 2>&1 || true
    tail -5 "$OUT/conformance_gpu.txt"
  fi
  if [ "${SKIP_TRANSFORM:-0}" != 1 ]; then
    timeout "${SWEEP_S:-540}" python3 -u -P -m tokenbits.kernels.bench_gpu --data .bench/vit_frames.npy \
        --transform 2048 --json "$OUT/transform.json" 2>&1 | tee "$OUT/transform.txt" || true
  fi
  if [ "${PROFILE:-0}" = 1 ]; then
    # Nsight Compute on the transform decode's levels and GEMM launches (512 frames): the
    # default launch and the sweep's best (transform.json), or PROFILE_VARIANT
    V=${PROFILE_VARIANT:-$(python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1])).get('transform_variant') or {}))" "$OUT/transform.json" 2>/dev/null || echo '{}')}
    timeout "${PROFILE_S:-200}" ncu --clock-control none --profile-from-start off --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats --section ComputeWorkloadAnalysis \
        -k "regex:_levels_limbs_kernel|_inverse_kernel" -o /tmp/tkb_tprofile \
        python3 -P -m tokenbits.kernels.bench_gpu --data .bench/vit_frames.npy --transform 512 \
        --profile-transform "$V" > "$OUT/tprofile_log.txt" 2>&1 || true
    ncu -i /tmp/tkb_tprofile.ncu-rep --page details --print-details all > "$OUT/tprofile.txt" 2>&1 || true
  fi
  exit 0
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  TKB_TEST_DEVICE=cuda python3 -P -m pytest -q -p no:cacheprovider tests/test_kernels.py \
      tests/test_gpu_codec.py > "$OUT/gpu_tests.txt" 2>&1 || true
  tail -5 "$OUT/gpu_tests.txt"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 -P -m tokenbits.kernels.bench_gpu --data .bench/vit_frames.npy \
      --json "$OUT/bench_gpu.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_gpu.txt"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  # Nsight Compute on one encode and one decode of 2048 frames (BENCHMARKS.md, "Profiles")
  ncu --clock-control none --profile-from-start off --section WarpStateStats \
      --section SourceCounters --section SchedulerStats --section Occupancy \
      --section MemoryWorkloadAnalysis --section SpeedOfLight --section LaunchStats \
      --section ComputeWorkloadAnalysis -k "regex:_decode_kernel|_encode_rel_kernel" \
      -o /tmp/tkb_profile python3 -P -m tokenbits.kernels.bench_gpu \
      --data .bench/vit_frames.npy --profile 2048 ${PROFILE_ARGS:-} > "$OUT/profile_log.txt" 2>&1
  ncu -i /tmp/tkb_profile.ncu-rep --page details --print-details all > "$OUT/profile.txt"
  ncu -i /tmp/tkb_profile.ncu-rep --page source --csv --print-source sass \
      | gzip -9 > "$OUT/profile_src.csv.gz"
fi
