#!/usr/bin/env bash
# Build, test and benchmark on a CUDA machine, offline (no package downloads).
#
#   bash benchmarks/gpu.sh [STEP] [RESULTS_DIR]      (default: all benchmarks/results/latest-gpu)
#
# Steps, each a few minutes on one H100, so they can also run one command at a time:
#   build   flex._C with its CUDA sources against the installed torch (no dependency install)
#   test    the kernel, model and pipeline tests on the GPU (Triton compiled, not interpreted)
#   short   op benchmarks + every end-to-end path at 5 s and 30 s, with the option table
#   long    FLEX on, eager and fastest, at 5 s and 240 s (flat FPS and flat memory)
#   all     the four in order (the default)
# Logs and results go to RESULTS_DIR; results.json is rewritten after every measured step,
# so a run cut short keeps what it measured. Failed tests do not stop "all", but make it
# exit 1 at the end.
set -euo pipefail
step=${1:-all}
out=${2:-benchmarks/results/latest-gpu}
mkdir -p "$out"

build() {
    python -c "import torch; assert torch.cuda.is_available(), 'needs a CUDA device'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"
    FLEX_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
        pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 \
        || { tail -50 "$out/build.log"; return 1; }
    python -c "import flex.ops as o; print({b: o.backend_status(b) for b in o.BACKENDS})" | tee "$out/backends.txt"
}

run_tests() {
    python -m pytest -q --maxfail=25 tests/test_op_rope3d.py tests/test_op_norm_rope_cache_write.py \
        tests/test_op_ring_attention.py tests/test_op_dispatch.py tests/test_op_fuzz.py tests/test_chunk_step.py \
        tests/test_model.py tests/test_pipeline.py 2>&1 | tee "$out/tests.log" | tail -15
}

short() {
    python benchmarks/run.py --device cuda --horizons 5,30 --out "$out/ops-and-5-30s" 2>&1 \
        | tee "$out/run-5-30s.log" | tail -40
}

long() {
    python benchmarks/run.py --device cuda --suite e2e --horizons 5,240 --paths on,fast --no-options \
        --out "$out/e2e-5-240s" 2>&1 | tee "$out/run-5-240s.log" | tail -25
}

case "$step" in
    build) build ;;
    test) run_tests ;;
    short) short ;;
    long) long ;;
    all)
        build
        status=0
        run_tests || status=1
        short
        long
        exit $status
        ;;
    *) echo "step must be build, test, short, long or all, got '$step'" >&2; exit 2 ;;
esac
