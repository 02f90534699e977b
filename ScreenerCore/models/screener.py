"""The three Screener models together: descriptor, condition and density, scoring patches."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .density import build_density
from .positional import patch_positions_mm, sincos_encoding
from .unet import build_net


class ScreenerModel(nn.Module):
    """Scores every voxel of a batch of patches with -log q(descriptor | condition) in nats."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.descriptor = build_net(config.descriptor)

        self.condition = None
        if config.condition.kind == "masked":
            self.condition = build_net(config.condition.net)

        self.density = build_density(config.density, config.descriptor.out_channels, config.condition.channels)
        self.register_buffer("spacing_mm", torch.tensor(config.preprocessing.spacing_mm, dtype=torch.float32),
                             persistent=False)

    def conditions(self, intensity: torch.Tensor, origin_mm: torch.Tensor | None) -> torch.Tensor | None:
        """Return the condition features for patches (B, 1, D, H, W), or None for a marginal density.

        The masked-context net sees the whole patch as visible (mask channel of ones), as in
        its training views where only some blocks were hidden.
        """
        kind = self.config.condition.kind
        if kind == "none":
            return None
        if kind == "masked":
            visible = torch.ones_like(intensity)
            return self.condition(torch.cat([intensity, visible], dim=1))
        if origin_mm is None:
            raise ValueError("Sin-cos conditions need the patch origins in mm.")
        positions = patch_positions_mm(origin_mm.to(intensity.dtype), self.spacing_mm.to(intensity.dtype),
                                       intensity.shape[2:])
        return sincos_encoding(positions, self.config.condition.frequencies, self.config.condition.max_wavelength_mm)

    def forward(self, intensity: torch.Tensor, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Return anomaly scores (B, D, H, W) for patches `intensity` (B, 1, D, H, W).

        `origin_mm` (B, 3) is the physical (x, y, z) position of each patch's first voxel,
        needed only for sin-cos conditions.
        """
        descriptors = self.descriptor(intensity)
        condition = self.conditions(intensity, origin_mm)
        # The density runs in float32 even under autocast: its log-variances and squares
        # overflow or lose the score's precision in half precision.
        with torch.autocast(device_type=intensity.device.type, enabled=False):
            condition = None if condition is None else condition.float()
            return self.density(descriptors.float(), condition)
