"""Streaming rollouts are bit-identical to the ones recorded before the library was restructured."""
import pytest
import torch

from rollout_cases import DATA, cases, run_case

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recorded():
    return torch.load(DATA, weights_only=True)


def test_every_case_was_recorded(recorded):
    assert sorted(recorded) == sorted(cid for cid, *_ in cases())


@pytest.mark.parametrize("cid,name,backend,dtype", cases(), ids=[c[0] for c in cases()])
def test_rollout_is_bit_identical(recorded, cid, name, backend, dtype):
    out = run_case(name, backend, dtype)
    assert out.dtype == recorded[cid].dtype and out.shape == recorded[cid].shape
    assert torch.equal(out, recorded[cid]), (out - recorded[cid]).abs().max().item()
