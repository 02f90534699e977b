"""Training stages: embedding nets (descriptor or masked condition), then the density on frozen nets."""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ScreenerCore.calibration import Calibration
from ScreenerCore.models import ScreenerModel
from ScreenerCore.models.unet import build_net
from ScreenerCore.config import NetConfig

from .data import TrainingVolume
from .losses import VicregWeights, infonce_loss, vicreg_loss
from .views import ViewConfig, _crop_padded, sample_positive_pair

logger = logging.getLogger(__name__)


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


def projector(in_features: int, width: int) -> nn.Module:
    """The MLP that maps descriptors to the space where VICReg or InfoNCE is computed."""
    return nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                         nn.Linear(width, width))


def cosine_learning_rate(step: int, total: int, base: float, warmup: int = 20) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def gather_positions(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Return features (B, D, S, S, S) at positions (B, n, 3) as (B * n, D)."""
    batch, channels = features.shape[:2]
    z, y, x = positions.unbind(-1)
    batch_index = torch.arange(batch, device=features.device).view(-1, 1).expand_as(z)
    return features.permute(0, 2, 3, 4, 1)[batch_index, z, y, x].reshape(-1, channels)


def train_embedding_net(net_config: NetConfig, volumes: list[TrainingVolume], views: ViewConfig,
                        stage: StageConfig, pad_value: float, log_path: Path | None = None,
                        description: str = "descriptor") -> nn.Module:
    """Train a net so that the same point in two views of a positive pair gets the same embedding.

    With views.mask_ratio > 0 each view is block-masked and the net takes 2 input channels
    (masked image and visibility): that trains the masking-invariant condition net.
    """
    torch.manual_seed(stage.seed)
    rng = np.random.default_rng(stage.seed)
    net = build_net(net_config)
    head = projector(net_config.out_channels, stage.projector_width)
    parameters = list(net.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=stage.learning_rate, weight_decay=stage.weight_decay)
    net.train()
    head.train()

    log_file = open(log_path, "w", newline="", encoding="utf-8") if log_path else None
    writer = csv.writer(log_file) if log_file else None
    started = time.perf_counter()
    progress = tqdm(range(stage.steps), desc=description, unit="step")
    for step in progress:
        pairs = [sample_positive_pair(volumes[rng.integers(len(volumes))], views, rng, pad_value)
                 for _ in range(stage.volumes_per_step)]
        inputs = torch.cat([pair.views for pair in pairs])  # (2m, C, S, S, S), views of a pair adjacent
        positions = torch.stack([pair.positions for pair in pairs])  # (m, 2, n, 3)

        features = net(inputs)
        features = features.view(len(pairs), 2, *features.shape[1:])
        first = gather_positions(features[:, 0], positions[:, 0])
        second = gather_positions(features[:, 1], positions[:, 1])
        projected = head(torch.cat([first, second]))
        z1, z2 = projected.chunk(2)
        if stage.objective == "vicreg":
            loss, terms = vicreg_loss(z1, z2, stage.vicreg)
        else:
            loss, terms = infonce_loss(z1, z2, stage.infonce_temperature)

        for group in optimizer.param_groups:
            group["lr"] = cosine_learning_rate(step, stage.steps, stage.learning_rate)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, stage.gradient_clip)
        optimizer.step()

        progress.set_postfix(loss=f"{float(loss):.3f}")
        if writer and (step % stage.log_every == 0 or step == stage.steps - 1):
            if step == 0:
                writer.writerow(["step", "seconds", "loss", *terms])
            writer.writerow([step, round(time.perf_counter() - started, 1), float(loss), *terms.values()])
            log_file.flush()
    if log_file:
        log_file.close()
    return net.eval()


def sample_plain_crop(volume: TrainingVolume, size: int, rng: np.random.Generator, pad_value: float):
    """Return an unaugmented (1, S, S, S) crop centred on a random body voxel, its body mask and start."""
    body = np.argwhere(volume.body_mask)
    centre = body[rng.integers(len(body))] if len(body) else np.array(volume.intensity.shape) // 2
    start = centre - size // 2
    extent = np.full(3, size)
    crop = _crop_padded(volume.intensity, start, extent, pad_value)
    mask = _crop_padded(volume.body_mask.astype(np.float32), start, extent, 0.0) > 0.5
    return torch.from_numpy(crop)[None], torch.from_numpy(mask), start


def crop_origin_mm(volume: TrainingVolume, start_zyx: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.array(volume.origin_mm) + start_zyx[::-1] * np.array(volume.spacing_mm),
                        dtype=torch.float32)


def train_density(model: ScreenerModel, volumes: list[TrainingVolume], crop_size: int, stage: StageConfig,
                  pad_value: float, log_path: Path | None = None) -> None:
    """Fit model.density by maximum likelihood on in-body voxels, with descriptor and condition frozen."""
    torch.manual_seed(stage.seed)
    rng = np.random.default_rng(stage.seed + 1)
    model.eval()
    model.density.train()
    optimizer = torch.optim.AdamW(model.density.parameters(), lr=stage.learning_rate,
                                  weight_decay=stage.weight_decay)

    log_file = open(log_path, "w", newline="", encoding="utf-8") if log_path else None
    writer = csv.writer(log_file) if log_file else None
    started = time.perf_counter()
    progress = tqdm(range(stage.steps), desc="density", unit="step")
    for step in progress:
        crops, masks, origins = [], [], []
        for _ in range(stage.volumes_per_step):
            volume = volumes[rng.integers(len(volumes))]
            crop, mask, start = sample_plain_crop(volume, crop_size, rng, pad_value)
            crops.append(crop)
            masks.append(mask)
            origins.append(crop_origin_mm(volume, start))
        inputs, masks, origins = torch.stack(crops), torch.stack(masks), torch.stack(origins)

        with torch.no_grad():
            descriptors = model.descriptor(inputs)
            condition = model.conditions(inputs, origins)
        nll = model.density(descriptors, condition)
        loss = nll[masks].mean() if masks.any() else nll.mean()

        for group in optimizer.param_groups:
            group["lr"] = cosine_learning_rate(step, stage.steps, stage.learning_rate)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.density.parameters(), stage.gradient_clip)
        optimizer.step()

        progress.set_postfix(nll=f"{float(loss):.2f}")
        if writer and (step % stage.log_every == 0 or step == stage.steps - 1):
            if step == 0:
                writer.writerow(["step", "seconds", "nll"])
            writer.writerow([step, round(time.perf_counter() - started, 1), float(loss)])
            log_file.flush()
    if log_file:
        log_file.close()
    model.eval()


def calibrate(model: ScreenerModel, volumes: list[TrainingVolume], crop_size: int, crops_per_volume: int,
              pad_value: float, seed: int = 0, border: int = 8) -> Calibration:
    """Return score quantiles over in-body voxels of random crops of the training volumes.

    `border` voxels at each crop face are left out, because sliding-window inference
    averages patch edges away.
    """
    rng = np.random.default_rng(seed + 2)
    samples = []
    inner = slice(border, crop_size - border)
    with torch.inference_mode():
        for volume in volumes:
            for _ in range(crops_per_volume):
                crop, mask, start = sample_plain_crop(volume, crop_size, rng, pad_value)
                scores = model(crop[None], crop_origin_mm(volume, start)[None])[0]
                inside = mask[inner, inner, inner]
                samples.append(scores[inner, inner, inner][inside].numpy())
    return Calibration.from_scores(np.concatenate(samples))
