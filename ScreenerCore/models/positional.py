"""Sin-cos encodings of absolute voxel position in the whole CT, in mm."""

from __future__ import annotations

import math

import torch


def sincos_encoding(positions_mm: torch.Tensor, frequencies: int, max_wavelength_mm: float) -> torch.Tensor:
    """Encode positions (B, 3, D, H, W) in mm as (B, 6 * frequencies, D, H, W) sin and cos features.

    Wavelengths run geometrically from `max_wavelength_mm` down by factors of 2, so the
    shortest is max_wavelength_mm / 2 ** (frequencies - 1).
    """
    wavelengths = max_wavelength_mm / (2.0 ** torch.arange(frequencies, dtype=positions_mm.dtype,
                                                           device=positions_mm.device))
    angular = (2 * math.pi / wavelengths).view(1, 1, -1, 1, 1, 1)
    phases = positions_mm.unsqueeze(2) * angular
    batch, _, _, *spatial = phases.shape
    features = torch.cat([torch.sin(phases), torch.cos(phases)], dim=2)
    return features.reshape(batch, 6 * frequencies, *spatial)


def patch_positions_mm(origin_mm: torch.Tensor, spacing_mm: torch.Tensor, patch_size) -> torch.Tensor:
    """Return the (x, y, z) mm position of every voxel of patches, shaped (B, 3, D, H, W).

    `origin_mm` is (B, 3): the position of each patch's first voxel; the model grid has
    identity direction, so array axes (z, y, x) run along physical z, y and x.
    """
    depth, height, width = patch_size
    device, dtype = origin_mm.device, origin_mm.dtype
    z = torch.arange(depth, device=device, dtype=dtype) * spacing_mm[2]
    y = torch.arange(height, device=device, dtype=dtype) * spacing_mm[1]
    x = torch.arange(width, device=device, dtype=dtype) * spacing_mm[0]
    grid_z, grid_y, grid_x = torch.meshgrid(z, y, x, indexing="ij")
    offsets = torch.stack([grid_x, grid_y, grid_z])  # (3, D, H, W) in (x, y, z) order
    return origin_mm.view(-1, 3, 1, 1, 1) + offsets.unsqueeze(0)
