"""Density models q(y | c) of descriptors y given conditions c; they return -log q per voxel in nats."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import DensityConfig

LOG_2PI = math.log(2 * math.pi)
# Log-variance bounds keep the NLL finite for features that are nearly constant in training.
MIN_LOG_VARIANCE, MAX_LOG_VARIANCE = -9.0, 9.0


def gaussian_nll(y: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """Return -log N(y; mean, diag(exp(log_variance))) summed over the channel axis 1."""
    terms = log_variance + (y - mean) ** 2 * torch.exp(-log_variance) + LOG_2PI
    return 0.5 * terms.sum(dim=1)


class MarginalGaussian(nn.Module):
    """A diagonal Gaussian with one learned mean and variance per descriptor channel."""

    def __init__(self, descriptor_channels: int):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(descriptor_channels))
        self.log_variance = nn.Parameter(torch.zeros(descriptor_channels))

    def forward(self, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        log_variance = self.log_variance.clamp(MIN_LOG_VARIANCE, MAX_LOG_VARIANCE).view(shape)
        return gaussian_nll(y, self.mean.view(shape), log_variance)


class ConditionalGaussian(nn.Module):
    """A diagonal Gaussian whose mean and log-variance come from the condition through 3x3x3 convs."""

    def __init__(self, descriptor_channels: int, condition_channels: int, hidden_channels: int = 32):
        super().__init__()
        self.predictor = nn.Sequential(
            nn.Conv3d(condition_channels, hidden_channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv3d(hidden_channels, 2 * descriptor_channels, 3, padding=1),
        )

    def forward(self, y: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        mean, log_variance = self.predictor(condition).chunk(2, dim=1)
        return gaussian_nll(y, mean, log_variance.clamp(MIN_LOG_VARIANCE, MAX_LOG_VARIANCE))


def build_density(config: DensityConfig, descriptor_channels: int, condition_channels: int) -> nn.Module:
    if config.kind == "gaussian":
        if condition_channels == 0:
            return MarginalGaussian(descriptor_channels)
        return ConditionalGaussian(descriptor_channels, condition_channels, config.hidden_channels)
    if config.kind == "flow":
        from .flow import build_flow  # noqa: PLC0415 - the flow is optional

        return build_flow(config, descriptor_channels, condition_channels)
    raise ValueError(f"Unknown density kind '{config.kind}'.")
