"""The upstream code for the tests (benchmarks/upstream_code.py), skipping where it is absent."""
from __future__ import annotations

import pytest

from benchmarks import upstream_code
from benchmarks.upstream_code import float64_norms  # noqa: F401  (re-exported for the tests)


def import_upstream(repo: str, *names: str):
    """Modules of ../shared/upstream/<repo>; skips the test with the reason when it is absent."""
    try:
        return upstream_code.import_upstream(repo, *names)
    except upstream_code.UpstreamMissing as err:
        pytest.skip(str(err))
