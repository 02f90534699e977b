"""Fitting the density q(descriptor | condition) on frozen nets, and calibrating the scores."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ScreenerCore.calibration import Calibration
from ScreenerCore.models import ScreenerModel
from ScreenerCore.postprocessing import smooth_scores

from .checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint
from .data import TrainingVolume
from .distributed import DistributedContext, barrier, gather_arrays
from .train import StageConfig, autocast_for, cosine_learning_rate, rank_generator
from .training_log import TrainingLog
from .views import _crop_padded

logger = logging.getLogger(__name__)


def sample_plain_crop(volume: TrainingVolume, size: int, rng: np.random.Generator, pad_value: float):
    """Return an unaugmented (1, S, S, S) crop centred on a random body voxel, its body mask and start.

    Crops that reach beyond the volume (small volumes included) are padded with `pad_value`.
    """
    body = np.argwhere(volume.body_mask)
    centre = body[rng.integers(len(body))] if len(body) else np.array(volume.intensity.shape) // 2
    start = centre - size // 2
    extent = np.full(3, size)
    crop = _crop_padded(volume.intensity, start, extent, pad_value)
    mask = _crop_padded(volume.body_mask.astype(np.float32), start, extent, 0.0) > 0.5
    return torch.from_numpy(crop)[None], torch.from_numpy(mask), start


def crop_origin_mm(volume: TrainingVolume, start_zyx: np.ndarray) -> torch.Tensor:
    """Return the physical (x, y, z) position in mm of a crop's first voxel, as the inference pipeline computes it."""
    return torch.tensor(np.array(volume.origin_mm) + start_zyx[::-1] * np.array(volume.spacing_mm),
                        dtype=torch.float32)


def train_density(model: ScreenerModel, volumes: list[TrainingVolume], crop_size: int, stage: StageConfig,
                  pad_value: float, log_path: Path | None = None, context: DistributedContext | None = None,
                  checkpoint: CheckpointConfig | None = None, tensorboard_dir: Path | None = None) -> None:
    """Fit model.density by maximum likelihood on in-body voxels, with descriptor and condition frozen.

    The loss is the negative log-likelihood per voxel in nats, averaged over the in-body
    voxels of the step's crops. Under torchrun each rank samples its own `volumes`.
    """
    context = context or DistributedContext()
    checkpoint = checkpoint or CheckpointConfig()
    torch.manual_seed(stage.seed)
    rng = rank_generator(stage.seed + 1, context.rank)
    model.to(context.device)
    model.eval()
    model.density.train()
    optimizer = torch.optim.AdamW(model.density.parameters(), lr=stage.learning_rate,
                                  weight_decay=stage.weight_decay)

    first_step = 0
    if checkpoint.resume:
        first_step = load_checkpoint(checkpoint.path, {"density": model.density}, optimizer, rng)
    density = DistributedDataParallel(model.density) if context.is_distributed else model.density

    last_step = stage.steps if checkpoint.stop_after is None else min(stage.steps, checkpoint.stop_after)
    log = TrainingLog(log_path if context.is_main else None, stage.log_every,
                      tensorboard_dir if context.is_main else None, append=first_step > 0)
    started = time.perf_counter()
    progress = tqdm(range(first_step, last_step), desc="density", unit="step", disable=not context.is_main)
    for step in progress:
        crops, masks, origins = [], [], []
        for _ in range(stage.volumes_per_step):
            volume = volumes[rng.integers(len(volumes))]
            crop, mask, start = sample_plain_crop(volume, crop_size, rng, pad_value)
            crops.append(crop)
            masks.append(mask)
            origins.append(crop_origin_mm(volume, start))
        inputs = torch.stack(crops).to(context.device)
        masks = torch.stack(masks).to(context.device)
        origins = torch.stack(origins).to(context.device)

        with torch.no_grad(), autocast_for(context.device, stage.mixed_precision):
            descriptors = model.descriptor(inputs)
            condition = model.conditions(inputs, origins)
        condition = None if condition is None else condition.float()
        nll = density(descriptors.float(), condition)
        loss = nll[masks].mean() if masks.any() else nll.mean()

        learning_rate = cosine_learning_rate(step, stage.steps, stage.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.density.parameters(), stage.gradient_clip)
        optimizer.step()

        loss_value = float(loss.detach())
        progress.set_postfix(nll=f"{loss_value:.2f}")
        elapsed = time.perf_counter() - started
        crops_per_second = (step + 1 - first_step) * len(crops) * context.world_size / max(elapsed, 1e-9)
        log.record(step, stage.steps, elapsed, {"nll": loss_value, "learning_rate": learning_rate,
                                                "crops_per_second": round(crops_per_second, 3)})
        done = step + 1
        if checkpoint.path is not None and context.is_main and (
                done == last_step or (checkpoint.every and done % checkpoint.every == 0)):
            save_checkpoint(checkpoint.path, done, {"density": model.density}, optimizer, rng)
    log.close()
    barrier(context)
    model.eval()


def calibrate(model: ScreenerModel, volumes: list[TrainingVolume], crop_size: int, crops_per_volume: int,
              pad_value: float, seed: int = 0, border: int = 8,
              context: DistributedContext | None = None) -> Calibration:
    """Return score quantiles over in-body voxels of random crops of the training volumes.

    `border` voxels at each crop face are left out, because sliding-window inference
    averages patch edges away. Under torchrun every rank scores its own volumes and the
    quantiles come from the scores of all ranks.
    """
    context = context or DistributedContext()
    rng = rank_generator(seed + 2, context.rank)
    samples = []
    inner = slice(border, crop_size - border)
    model.to(context.device).eval()
    with torch.inference_mode():
        for volume in volumes:
            for _ in range(crops_per_volume):
                crop, mask, start = sample_plain_crop(volume, crop_size, rng, pad_value)
                origin = crop_origin_mm(volume, start)[None].to(context.device)
                scores = model(crop[None].to(context.device), origin)[0].cpu().numpy()
                # The same smoothing as at inference, so thresholds match the maps users see.
                scores = smooth_scores(scores, volume.spacing_mm[::-1], model.config.preprocessing.score_smoothing_mm)
                inside = mask[inner, inner, inner]
                samples.append(scores[inner, inner, inner][inside.numpy()])
    return Calibration.from_scores(gather_arrays(np.concatenate(samples), context))
