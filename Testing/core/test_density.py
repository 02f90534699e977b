"""Density models against closed forms."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import multivariate_normal

from ScreenerCore.models.density import ConditionalGaussian, MarginalGaussian, gaussian_nll


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(2, 4, 3, 2, 2))
    mean = rng.normal(size=y.shape)
    log_variance = rng.normal(scale=0.5, size=y.shape)
    nll = gaussian_nll(torch.tensor(y), torch.tensor(mean), torch.tensor(log_variance)).numpy()

    for index in np.ndindex(2, 3, 2, 2):
        b, z, yy, x = index
        expected = -multivariate_normal.logpdf(y[b, :, z, yy, x], mean=mean[b, :, z, yy, x],
                                               cov=np.diag(np.exp(log_variance[b, :, z, yy, x])))
        assert np.isclose(nll[index], expected, rtol=1e-10)


def test_marginal_gaussian_standard_normal():
    model = MarginalGaussian(3)
    y = torch.zeros(1, 3, 1, 1, 1)
    # -log N(0; 0, I) in 3 dimensions = 1.5 log(2 pi).
    assert torch.isclose(model(y)[0, 0, 0, 0], torch.tensor(1.5 * np.log(2 * np.pi), dtype=torch.float32))


def test_conditional_gaussian_uses_condition():
    torch.manual_seed(0)
    model = ConditionalGaussian(descriptor_channels=2, condition_channels=3, hidden_channels=4)
    y = torch.randn(1, 2, 4, 4, 4)
    first = model(y, torch.zeros(1, 3, 4, 4, 4))
    second = model(y, torch.randn(1, 3, 4, 4, 4))
    assert first.shape == (1, 4, 4, 4)
    assert not torch.allclose(first, second)


def test_conditional_gaussian_can_fit_shifted_mean():
    torch.manual_seed(0)
    model = ConditionalGaussian(descriptor_channels=1, condition_channels=1, hidden_channels=4)
    condition = torch.randn(8, 1, 4, 4, 4)
    y = 2.0 * condition + 0.1 * torch.randn_like(condition)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    with torch.no_grad():
        initial = float(model(y, condition).mean())
    for _ in range(200):
        optimizer.zero_grad()
        loss = model(y, condition).mean()
        loss.backward()
        optimizer.step()
    assert float(loss) < initial - 1.0
