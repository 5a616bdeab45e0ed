"""Every op on every backend present (and the upstream-style baseline), timed by pytest-benchmark
on the model's shapes (benchmarks/ops_suite.py holds the case list; see benchmarks/conftest.py
for the options). On a GPU every call is followed by a device synchronisation."""
import pytest
import torch

from benchmarks import ops_suite
from benchmarks.run import default_dtype
from benchmarks.timing import sync

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _config(config):
    device = torch.device(config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[config.getoption("--bench-dtype") or default_dtype(device)]
    return device, dtype, config.getoption("--bench-quick")


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        device, dtype, quick = _config(metafunc.config)
        cases = ops_suite.all_cases(device, dtype, quick)
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def test_op(benchmark, case, request):
    device, _, quick = _config(request.config)
    try:
        fn = case.make()
    except RuntimeError as err:  # e.g. no compiler for torch's flex_attention here
        pytest.skip(str(err))
    benchmark.group = f"{case.op} [{case.layout}] {case.shape} {case.dtype}"
    benchmark.extra_info.update(case.info())
    repeats = request.config.getoption("--bench-repeats") or (3 if quick else 10)

    def call():
        fn()
        sync(device)

    benchmark.pedantic(call, rounds=repeats, warmup_rounds=2, iterations=1)
