"""Settings and helpers shared by the training stages: optimisation, schedule, seeds, position lookup."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .losses import VicregWeights


@dataclass
class StageConfig:
    """Optimisation settings of one training stage."""

    steps: int = 500
    volumes_per_step: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    gradient_clip: float = 5.0
    seed: int = 0
    log_every: int = 10
    objective: str = "vicreg"
    vicreg: VicregWeights = field(default_factory=VicregWeights)
    infonce_temperature: float = 0.1
    projector_width: int = 256
    # bfloat16 autocast of the networks on CUDA; ignored on CPU.
    mixed_precision: bool = True


def projector(in_features: int, width: int) -> nn.Module:
    """The MLP that maps descriptors to the space where VICReg or InfoNCE is computed."""
    return nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                         nn.Linear(width, width))


def cosine_learning_rate(step: int, total: int, base: float, warmup: int = 20) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at step `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def rank_generator(seed: int, rank: int) -> np.random.Generator:
    """Return the sampling generator of one rank; rank 0 draws what a single-process run draws."""
    return np.random.default_rng(seed if rank == 0 else [seed, rank])


def autocast_for(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when enabled; a no-op context on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def gather_positions(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Return features (B, D, S, S, S) at positions (B, n, 3) as (B * n, D)."""
    batch, channels = features.shape[:2]
    z, y, x = positions.unbind(-1)
    batch_index = torch.arange(batch, device=features.device).view(-1, 1).expand_as(z)
    return features.permute(0, 2, 3, 4, 1)[batch_index, z, y, x].reshape(-1, channels)


# The stage functions lived in this module before; these names stay importable from here.
_MOVED = {"train_embedding_net": "embedding_training", "train_density": "density_training",
          "calibrate": "density_training", "sample_plain_crop": "density_training",
          "crop_origin_mm": "density_training"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
