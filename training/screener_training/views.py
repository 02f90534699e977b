"""Positive pairs for dense self-supervision: two overlapping, differently augmented crops of one CT.

A pair also carries n positions inside the overlap, given in each view's own voxel
coordinates, so the same anatomical point can be looked up in both views' features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import TrainingVolume


@dataclass
class ViewConfig:
    """Settings for cutting and augmenting positive pairs."""

    crop_size: int = 48
    positions_per_pair: int = 256
    # Each view is cut at `scale` times the crop size (random in this range) and resized to the
    # crop size, so the two views see the anatomy at different spacings.
    scale_range: tuple[float, float] = (0.8, 1.25)
    # The second view's centre moves by up to this fraction of the crop size per axis.
    max_shift_fraction: float = 0.5
    brightness: float = 0.1
    contrast_range: tuple[float, float] = (0.8, 1.2)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_std_max: float = 0.05
    blur_sigma_max: float = 1.0
    sharpen_probability: float = 0.2
    # Block masking for the condition net: fraction of blocks hidden, block edge as a fraction of the crop.
    mask_ratio: float = 0.0
    mask_block_fraction: float = 0.25
    # Block edge in voxels; when set, it replaces mask_block_fraction.
    mask_block_size: int | None = None


@dataclass
class PositivePair:
    views: torch.Tensor  # (2, C, S, S, S); C = 1, or 2 with the visibility mask
    positions: torch.Tensor  # (2, n, 3) voxel indices (z, y, x) of the same points in each view
    origin_mm: torch.Tensor  # (2, 3) physical (x, y, z) position of each view's first voxel, in mm
    spacing_mm: torch.Tensor  # (2, 3) voxel spacing of each view in mm, (x, y, z)


def sample_view_boxes(shape, crop: int, body_mask: np.ndarray, config: ViewConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return the start (2, 3) and extent (2, 3) in source voxels of two overlapping views."""
    extents = np.stack([np.full(3, int(round(crop * rng.uniform(*config.scale_range)))) for _ in range(2)])
    body = np.argwhere(body_mask)
    centre = body[rng.integers(len(body))] if len(body) else np.array(shape) // 2
    shift = rng.uniform(-config.max_shift_fraction, config.max_shift_fraction, size=3) * crop
    centres = np.stack([centre, centre + shift])
    starts = np.round(centres - extents / 2).astype(int)
    return starts, extents


def sample_positive_pair(volume: TrainingVolume, config: ViewConfig, rng: np.random.Generator,
                         pad_value: float) -> PositivePair:
    """Cut two overlapping views of `volume`, augment them independently, and pair n positions."""
    crop = config.crop_size
    starts, extents = sample_view_boxes(volume.intensity.shape, crop, volume.body_mask, config, rng)

    # Positions: uniform in the overlap box, preferring voxels inside the body.
    low = np.maximum(starts[0], starts[1])
    high = np.minimum(starts[0] + extents[0], starts[1] + extents[1])
    high = np.maximum(high, low + 1)
    candidates = rng.integers(low, high, size=(4 * config.positions_per_pair, 3))
    inside = _in_body(volume.body_mask, candidates)
    order = np.argsort(~inside, kind="stable")
    source_points = candidates[order[:config.positions_per_pair]]

    views, positions = [], []
    for view in range(2):
        block = _crop_padded(volume.intensity, starts[view], extents[view], pad_value)
        resized = F.interpolate(torch.from_numpy(block)[None, None], size=(crop,) * 3, mode="trilinear",
                                align_corners=False)[0]
        views.append(augment_intensity(resized, config, rng))
        # Voxel centres map as (p + 0.5 - start) / scale - 0.5 under align_corners=False resizing.
        scale = extents[view] / crop
        local = np.round((source_points + 0.5 - starts[view]) / scale - 0.5).astype(int)
        positions.append(np.clip(local, 0, crop - 1))

    views = torch.stack(views)
    if config.mask_ratio > 0:
        views = torch.stack([apply_block_mask(v, config, rng) for v in views])

    # First voxel centre in mm; the model grid has identity direction and 1 voxel = spacing mm.
    origin = np.array(volume.origin_mm)
    spacing = np.array(volume.spacing_mm)
    scales = extents[:, ::-1] / crop
    origin_mm = [origin + (starts[v][::-1] + 0.5 * scales[v] - 0.5) * spacing for v in range(2)]
    return PositivePair(views=views, positions=torch.from_numpy(np.stack(positions)),
                        origin_mm=torch.tensor(np.stack(origin_mm), dtype=torch.float32),
                        spacing_mm=torch.tensor(scales * spacing, dtype=torch.float32))


def _in_body(body_mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    shape = np.array(body_mask.shape)
    valid = np.all((points >= 0) & (points < shape), axis=1)
    inside = np.zeros(len(points), dtype=bool)
    inside[valid] = body_mask[tuple(points[valid].T)]
    return inside


def _crop_padded(array: np.ndarray, start: np.ndarray, extent: np.ndarray, pad_value: float) -> np.ndarray:
    """Return array[start:start + extent], padding with `pad_value` where the box leaves the array."""
    out = np.full(tuple(extent), pad_value, dtype=np.float32)
    source_low = np.maximum(start, 0)
    source_high = np.minimum(start + extent, array.shape)
    if np.any(source_high <= source_low):
        return out
    target_low = source_low - start
    target_high = target_low + (source_high - source_low)
    out[tuple(slice(a, b) for a, b in zip(target_low, target_high))] = \
        array[tuple(slice(a, b) for a, b in zip(source_low, source_high))]
    return out


def augment_intensity(view: torch.Tensor, config: ViewConfig, rng: np.random.Generator) -> torch.Tensor:
    """Apply random contrast, brightness, gamma, blur or sharpening, and noise to a (1, S, S, S) view."""
    view = view * rng.uniform(*config.contrast_range) + rng.uniform(-config.brightness, config.brightness)

    # Gamma acts on [0, 1]; intensities live in about [-1, 1].
    unit = ((view + 1) / 2).clamp(0, 1)
    view = unit ** rng.uniform(*config.gamma_range) * 2 - 1

    sigma = rng.uniform(0, config.blur_sigma_max)
    if sigma > 0.1:
        blurred = gaussian_blur(view, sigma)
        if rng.random() < config.sharpen_probability:
            view = view + (view - blurred)  # unsharp masking
        else:
            view = blurred

    noise_std = rng.uniform(0, config.noise_std_max)
    return view + noise_std * torch.randn(view.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))


def gaussian_blur(view: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a (C, D, H, W) tensor with a separable Gaussian of `sigma` voxels."""
    radius = max(1, int(round(2 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=view.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = view.unsqueeze(0)
    channels = x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        weight = kernel.view(shape).repeat(channels, 1, 1, 1, 1)
        padding = [0, 0, 0]
        padding[axis] = radius
        x = F.conv3d(x, weight, padding=tuple(padding), groups=channels)
    return x[0]


def apply_block_mask(view: torch.Tensor, config: ViewConfig, rng: np.random.Generator) -> torch.Tensor:
    """Hide random cubic blocks of a (1, S, S, S) view; return (2, S, S, S): masked image and visibility."""
    size = view.shape[-1]
    edge = config.mask_block_size if config.mask_block_size else size * config.mask_block_fraction
    block = max(1, int(round(edge)))
    cells = -(-size // block)
    hidden = rng.random((cells,) * 3) < config.mask_ratio
    visible = torch.from_numpy(~hidden).float()
    visible = visible.repeat_interleave(block, 0).repeat_interleave(block, 1).repeat_interleave(block, 2)
    visible = visible[:size, :size, :size].unsqueeze(0)
    return torch.cat([view * visible, visible])
