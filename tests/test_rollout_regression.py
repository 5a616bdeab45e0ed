"""Streaming rollouts are bit-identical to the ones recorded before the library was restructured.

Bit identity holds for the CPU kernels they were recorded with: torch's AVX512 code path
(``torch.backends.cpu.get_cpu_capability()``). On a CPU where torch takes another path (AVX2,
say), its GEMMs and reductions round differently, so the rollouts are compared to rounding
tolerance there instead (float64 1e-12, float32 1e-5 of the largest value).
"""
import pytest
import torch

from rollout_cases import DATA, cases, run_case

pytestmark = pytest.mark.usefixtures("one_thread")

RECORDED_CPU_CAPABILITY = "AVX512"
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def recorded():
    return torch.load(DATA, weights_only=True)


def test_every_case_was_recorded(recorded):
    assert sorted(recorded) == sorted(cid for cid, *_ in cases())


@pytest.mark.parametrize("cid,name,backend,dtype", cases(), ids=[c[0] for c in cases()])
def test_rollout_is_bit_identical(recorded, cid, name, backend, dtype):
    out, want = run_case(name, backend, dtype), recorded[cid]
    assert out.dtype == want.dtype and out.shape == want.shape
    err = (out - want).abs().max().item()
    if torch.backends.cpu.get_cpu_capability() == RECORDED_CPU_CAPABILITY:
        assert torch.equal(out, want), err
    else:  # another vector ISA: the same computation, rounded differently
        assert err <= TOLERANCE[want.dtype] * want.abs().max().item(), err
