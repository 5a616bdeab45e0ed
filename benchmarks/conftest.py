"""Options of the pytest-benchmark op suite (benchmarks/test_ops.py), collected only when asked:

    pytest benchmarks --benchmark-only [--bench-device cuda] [--bench-dtype bf16] [--bench-quick]
        [--benchmark-json ops.json] [--benchmark-autosave] [--benchmark-compare]

The project's test run (testpaths = tests) never collects this folder.
"""
import os

# First-use canaries (flex.canary) stay out of the timed calls; `flex selftest` checks kernels.
os.environ.setdefault("FLEX_CANARY", "0")


def pytest_addoption(parser):
    group = parser.getgroup("flex op benchmarks")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when present)")
    group.addoption("--bench-dtype", default=None, choices=("bf16", "fp16", "fp32"),
                    help="default: as benchmarks/run.py (bf16 on a GPU or a CPU with native bf16, else fp32)")
    group.addoption("--bench-quick", action="store_true", help="tiny shapes: a smoke run")
    group.addoption("--bench-repeats", type=int, default=None, help="timed rounds per case (default 10, quick 3)")
