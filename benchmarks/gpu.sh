#!/usr/bin/env bash
# Build, test and benchmark on a CUDA machine, offline (no package downloads).
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]      (default: benchmarks/results/latest-gpu)
#
# 1. builds flex._C with its CUDA sources against the installed torch (no dependency install);
# 2. runs the kernel, model and pipeline tests on the GPU (Triton compiled, not interpreted);
# 3. runs the op benchmarks and the end-to-end benchmark in two runs that each stay within
#    minutes on one H100: every path at 5 s and 30 s with the option table, then FLEX on
#    (eager and fastest) at 5 s and 240 s for the flat-FPS and flat-memory checks.
# Logs and results go to RESULTS_DIR. A failed build stops the script; failed tests do not
# stop the benchmarks, but make the script exit 1 at the end.
set -euo pipefail
out=${1:-benchmarks/results/latest-gpu}
mkdir -p "$out"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "benchmarks/gpu.sh needs a CUDA device"
print("torch", torch.__version__, "on", torch.cuda.get_device_name())
PY
FLEX_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 \
    || { tail -50 "$out/build.log"; exit 1; }
python -c "import flex.ops as o; print({b: o.backend_status(b) for b in o.BACKENDS})" | tee "$out/backends.txt"
status=0
python -m pytest -q --maxfail=25 tests/test_cpp_ops.py tests/test_triton_kernels.py tests/test_backends.py \
    tests/test_reference_attention.py tests/test_ops_dispatch.py tests/test_chunk_step.py tests/test_model.py \
    tests/test_pipeline.py 2>&1 | tee "$out/tests.log" | tail -15 || status=1
python benchmarks/run.py --device cuda --horizons 5,30 --out "$out/ops-and-5-30s" 2>&1 | tee "$out/run-5-30s.log" | tail -40
python benchmarks/run.py --device cuda --suite e2e --horizons 5,240 --paths on,fast --no-options \
    --out "$out/e2e-5-240s" 2>&1 \
    | tee "$out/run-5-240s.log" | tail -25
exit $status
