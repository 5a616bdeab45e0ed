import pytest
import torch

from flex.noise import antiphase_noise


def samples(rho, n=200_000, f=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return antiphase_noise((n, f, 1, 1, 1), rho, generator=g, dtype=torch.float64).reshape(n, f)


@pytest.mark.parametrize("rho", [-1.0, -0.5, 0.0, 0.7])
def test_ar1_statistics(rho):
    z = samples(rho)
    n = z.shape[0]
    tol = 5 / n ** 0.5  # ~5 standard errors of a sample covariance of unit-variance data
    var = (z * z).mean(0)
    assert torch.allclose(var, torch.ones_like(var), atol=tol)
    lag1 = (z[:, 1:] * z[:, :-1]).mean(0)
    lag2 = (z[:, 2:] * z[:, :-2]).mean(0)
    assert torch.allclose(lag1, torch.full_like(lag1, rho), atol=tol)
    assert torch.allclose(lag2, torch.full_like(lag2, rho ** 2), atol=tol)


@pytest.mark.parametrize("rho", [-1.0, -0.3, 0.0, 0.5])
def test_adjacent_difference_energy(rho):
    f, d, n = 5, 64, 4000
    g = torch.Generator().manual_seed(1)
    z = antiphase_noise((n, f, 4, 4, 4), rho, generator=g, dtype=torch.float64)
    energy = (z[:, 1:] - z[:, :-1]).pow(2).sum(dim=(1, 2, 3, 4)).mean()
    expected = 2 * (f - 1) * (1 - rho) * d
    assert abs(energy - expected) <= 0.03 * max(expected, 2 * (f - 1) * d)


def test_rho_minus_one_alternates_exactly():
    z = antiphase_noise((2, 5, 3, 4, 6), -1.0, generator=torch.Generator().manual_seed(3))
    for u in range(5):
        assert torch.equal(z[:, u], z[:, 0] if u % 2 == 0 else -z[:, 0])


def test_rho_zero_is_plain_noise_and_seeded():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(antiphase_noise((1, 3, 2, 2, 2), 0.0, generator=g1), torch.randn((1, 3, 2, 2, 2), generator=g2))


def test_dtype_and_bad_input():
    z = antiphase_noise((1, 3, 2, 2, 2), -1.0, dtype=torch.float16)
    assert z.dtype == torch.float16
    with pytest.raises(ValueError, match="rho"):
        antiphase_noise((1, 3, 2, 2, 2), -1.5)
    with pytest.raises(ValueError, match="shape"):
        antiphase_noise((3, 2, 2, 2), 0.0)
