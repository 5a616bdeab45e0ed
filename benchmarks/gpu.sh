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
#   lease   everything a short GPU loan allows, within FLEX_LEASE_SECONDS (default 540 s, build
#           included), in this order, each part cut to the time left: build (arch 9.0 only),
#           `flex selftest --device cuda --dtype bf16` (every op and backend against the float64
#           reference at the model's shapes; a failure stops the lease before any speed run),
#           the bf16 Triton and CUDA kernels against the reference, the 1.3B 480x832 end-to-end
#           run at 30 s (upstream: its real code when importable, + accelerate, FLEX on eager, FLEX on fastest), the op table, and
#           FLEX on fastest at 240 s. RESULTS_DIR then holds one archive, flex-lease.tar.gz
#           (every log and results folder), repacked after every part, and lease.log.
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
        tests/test_op_ring_attention.py tests/test_op_head_tables.py tests/test_op_dispatch.py tests/test_op_fuzz.py \
        tests/test_chunk_step.py \
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

lease() {
    local final=$out work started=$SECONDS budget=${FLEX_LEASE_SECONDS:-540}
    work=$(mktemp -d)
    out=$work  # the parts write here; only the archive and the log go to the results folder
    export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
    status=0
    part() {  # part NAME CAP_SECONDS COMMAND...: run within min(cap, time left), then repack
        local name=$1 cap=$2 left t rc
        shift 2
        left=$((budget - (SECONDS - started)))
        t=$((cap < left ? cap : left))
        if ((t < 15)); then
            echo "$name: skipped, the lease time is used up" | tee -a "$final/lease.log"
            return 0
        fi
        local t0=$SECONDS
        echo "== $name (at most ${t} s)" | tee -a "$final/lease.log"
        set +e
        timeout --signal=INT --kill-after=10 "$t" "$@" > "$work/$name.log" 2>&1
        rc=$?
        set -e
        tail -n 25 "$work/$name.log" >> "$final/lease.log"
        echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$final/lease.log"
        ((rc == 0)) || status=1
        tar -czf "$final/flex-lease.tar.gz.tmp" -C "$work" . && mv "$final/flex-lease.tar.gz.tmp" "$final/flex-lease.tar.gz"
        return $rc
    }
    part build 240 bash "$0" build "$work" || true  # parts return their exit status; only the selftest's stops
    if ! part selftest 120 python -m flex.selftest --device cuda --dtype bf16; then
        echo "selftest failed: the speed runs are skipped (wrong kernels make wrong tables)" | tee -a "$final/lease.log"
        exit 1
    fi
    part kernels 75 python -m pytest -q -x tests/test_op_rope3d.py tests/test_op_norm_rope_cache_write.py \
        tests/test_op_ring_attention.py tests/test_op_head_tables.py -k "cuda or triton or bf16" || true
    part e2e-30s 200 python benchmarks/run.py --device cuda --suite e2e --horizons 30 --paths upstream,accelerate,on,fast \
        --no-options --repeats 2 --out "$work/e2e-30s" || true
    part ops 60 python benchmarks/run.py --device cuda --suite ops --out "$work/ops" || true
    part e2e-240s 150 python benchmarks/run.py --device cuda --suite e2e --horizons 240 --paths fast --no-options \
        --repeats 1 --out "$work/e2e-240s" || true
    echo "lease: $((SECONDS - started)) s in all, archive $final/flex-lease.tar.gz" | tee -a "$final/lease.log"
    exit $status
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
    lease) lease ;;
    *) echo "step must be build, test, short, long, all or lease, got '$step'" >&2; exit 2 ;;
esac
