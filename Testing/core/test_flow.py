"""Glow flow density: invertibility, exact log-determinants, marginal and conditional variants."""

from __future__ import annotations

import math

import pytest
import torch

from ScreenerCore.config import DensityConfig
from ScreenerCore.models.density import build_density
from ScreenerCore.models.flow import GlowDensity


def _trained_like(flow: GlowDensity, seed: int = 0) -> GlowDensity:
    """Give the zero-initialised coupling and condition layers random weights, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return flow.eval()


@pytest.mark.parametrize("condition_channels", [0, 3])
def test_flow_inverse_recovers_input(condition_channels):
    torch.manual_seed(0)
    flow = _trained_like(GlowDensity(5, condition_channels, steps=3, hidden_channels=8))
    y = torch.randn(2, 5, 4, 3, 2)
    condition = torch.randn(2, condition_channels, 4, 3, 2) if condition_channels else None

    z, _ = flow.transform(y, condition)
    recovered = flow.inverse(z, condition)

    assert not torch.allclose(z, y, atol=1e-2)
    torch.testing.assert_close(recovered, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("condition_channels", [0, 2])
def test_flow_log_determinant_matches_jacobian(condition_channels):
    torch.manual_seed(1)
    channels = 4
    flow = _trained_like(GlowDensity(channels, condition_channels, steps=2, hidden_channels=6)).double()
    # One voxel: the flow acts per voxel, so its Jacobian is channels x channels.
    y = torch.randn(1, channels, 1, 1, 1, dtype=torch.float64)
    condition = torch.randn(1, condition_channels, 1, 1, 1, dtype=torch.float64) if condition_channels else None

    def forward(values: torch.Tensor) -> torch.Tensor:
        return flow.transform(values.view(1, channels, 1, 1, 1), condition)[0].view(channels)

    jacobian = torch.autograd.functional.jacobian(forward, y.view(channels))
    _, log_determinant = flow.transform(y, condition)

    expected = torch.linalg.slogdet(jacobian).logabsdet
    assert abs(float(log_determinant.detach().view(-1)[0]) - float(expected)) < 1e-9


def test_flow_nll_is_gaussian_nll_of_latent():
    torch.manual_seed(2)
    flow = _trained_like(GlowDensity(3, 0, steps=2, hidden_channels=4))
    y = torch.randn(1, 3, 2, 2, 2)

    z, log_determinant = flow.transform(y)
    expected = 0.5 * (z ** 2).sum(dim=1) + 1.5 * math.log(2 * math.pi) - log_determinant

    torch.testing.assert_close(flow(y), expected)


def test_flow_integrates_to_one_in_two_dimensions():
    """q must be a density: its integral over a wide grid of 2D descriptors is 1."""
    torch.manual_seed(3)
    flow = _trained_like(GlowDensity(2, 0, steps=2, hidden_channels=4), seed=3).double()
    axis = torch.linspace(-12, 12, 601, dtype=torch.float64)
    grid_a, grid_b = torch.meshgrid(axis, axis, indexing="ij")
    y = torch.stack([grid_a, grid_b]).view(1, 2, -1, 1, 1)

    with torch.no_grad():
        density = torch.exp(-flow(y))
    cell_area = float(axis[1] - axis[0]) ** 2

    assert abs(float(density.sum()) * cell_area - 1.0) < 1e-3


def test_act_norm_initialises_from_first_batch():
    torch.manual_seed(4)
    flow = GlowDensity(3, 0, steps=1, hidden_channels=4).train()
    # The layers work on voxel rows (N, C).
    y = torch.randn(500, 3) * torch.tensor([10.0, 0.1, 3.0]) + 7.0

    normalised, _ = flow.layers[0](y)

    assert bool(flow.layers[0].initialized)
    torch.testing.assert_close(normalised.mean(dim=0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.std(dim=0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_conditional_flow_depends_on_condition():
    torch.manual_seed(5)
    flow = _trained_like(GlowDensity(4, 3, steps=2, hidden_channels=8))
    y = torch.randn(1, 4, 3, 3, 3)
    first = torch.randn(1, 3, 3, 3, 3)
    second = torch.randn(1, 3, 3, 3, 3)

    assert not torch.allclose(flow(y, first), flow(y, second))
    with pytest.raises(ValueError, match="conditional"):
        flow(y)


def test_build_density_makes_flow_of_config():
    config = DensityConfig(kind="flow", hidden_channels=8, flow_steps=3)

    marginal = build_density(config, descriptor_channels=6, condition_channels=0)
    conditional = build_density(config, descriptor_channels=6, condition_channels=5)

    assert isinstance(marginal, GlowDensity)
    assert marginal.condition_encoder is None
    assert len(marginal.layers) == 9
    assert conditional.condition_encoder[0].in_channels == 5
    assert conditional(torch.randn(1, 6, 2, 2, 2), torch.randn(1, 5, 2, 2, 2)).shape == (1, 2, 2, 2)
