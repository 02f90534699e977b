"""Training a dense embedding net (the descriptor, or the masked condition net) on positive pairs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ScreenerCore.config import NetConfig
from ScreenerCore.models.unet import build_net

from .checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint
from .data import TrainingVolume
from .distributed import DistributedContext, barrier, gather_with_gradient
from .losses import infonce_loss, vicreg_loss
from .train import StageConfig, autocast_for, cosine_learning_rate, gather_positions, projector, rank_generator
from .training_log import TrainingLog
from .views import ViewConfig, sample_positive_pair

logger = logging.getLogger(__name__)


class PairEmbedder(nn.Module):
    """The net and its projector head in one module, so DistributedDataParallel syncs both.

    forward(views (2m, C, S, S, S), positions (m, 2, n, 3)) returns the projected
    embeddings (m * n, width) of the paired positions in the first and second views.
    """

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, views: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net(views)
        features = features.view(positions.shape[0], 2, *features.shape[1:])
        first = gather_positions(features[:, 0], positions[:, 0])
        second = gather_positions(features[:, 1], positions[:, 1])
        return self.head(torch.cat([first, second])).chunk(2)


def train_embedding_net(net_config: NetConfig, volumes: list[TrainingVolume], views: ViewConfig,
                        stage: StageConfig, pad_value: float, log_path: Path | None = None,
                        description: str = "descriptor", context: DistributedContext | None = None,
                        checkpoint: CheckpointConfig | None = None,
                        tensorboard_dir: Path | None = None) -> nn.Module:
    """Train a net so that the same point in two views of a positive pair gets the same embedding.

    With views.mask_ratio > 0 each view is block-masked and the net takes 2 input channels
    (masked image and visibility): that trains the masking-invariant condition net.
    Under torchrun each rank samples pairs from its own `volumes` with its own seed, the loss
    is computed over the embeddings of all ranks (VICReg statistics and InfoNCE negatives
    over the global batch) and DistributedDataParallel averages the gradients. Returns the
    net in eval mode.
    """
    context = context or DistributedContext()
    checkpoint = checkpoint or CheckpointConfig()
    torch.manual_seed(stage.seed)
    rng = rank_generator(stage.seed, context.rank)
    embedder = PairEmbedder(build_net(net_config), projector(net_config.out_channels, stage.projector_width))
    embedder.to(context.device)
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=stage.learning_rate, weight_decay=stage.weight_decay)

    first_step = 0
    if checkpoint.resume:
        first_step = load_checkpoint(checkpoint.path, {"embedder": embedder}, optimizer, rng)
    trained = DistributedDataParallel(embedder) if context.is_distributed else embedder
    trained.train()

    last_step = stage.steps if checkpoint.stop_after is None else min(stage.steps, checkpoint.stop_after)
    log = TrainingLog(log_path if context.is_main else None, stage.log_every,
                      tensorboard_dir if context.is_main else None, append=first_step > 0)
    started = time.perf_counter()
    progress = tqdm(range(first_step, last_step), desc=description, unit="step", disable=not context.is_main)
    for step in progress:
        pairs = [sample_positive_pair(volumes[rng.integers(len(volumes))], views, rng, pad_value)
                 for _ in range(stage.volumes_per_step)]
        inputs = torch.cat([pair.views for pair in pairs]).to(context.device)  # (2m, C, S, S, S), pairs adjacent
        positions = torch.stack([pair.positions for pair in pairs]).to(context.device)  # (m, 2, n, 3)

        with autocast_for(context.device, stage.mixed_precision):
            z1, z2 = trained(inputs, positions)
        # Under torchrun the loss is computed over every rank's positions, so its statistics and negatives are global.
        z1, z2 = gather_with_gradient(z1.float(), context), gather_with_gradient(z2.float(), context)
        if stage.objective == "vicreg":
            loss, terms = vicreg_loss(z1, z2, stage.vicreg)
        else:
            loss, terms = infonce_loss(z1, z2, stage.infonce_temperature)

        learning_rate = cosine_learning_rate(step, stage.steps, stage.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(embedder.parameters(), stage.gradient_clip)
        optimizer.step()

        loss_value = float(loss.detach())
        progress.set_postfix(loss=f"{loss_value:.3f}")
        elapsed = time.perf_counter() - started
        pairs_per_second = (step + 1 - first_step) * len(pairs) * context.world_size / max(elapsed, 1e-9)
        log.record(step, stage.steps, elapsed, {"loss": loss_value, **terms, "learning_rate": learning_rate,
                                                "pairs_per_second": round(pairs_per_second, 3)})
        done = step + 1
        if checkpoint.path is not None and context.is_main and (
                done == last_step or (checkpoint.every and done % checkpoint.every == 0)):
            save_checkpoint(checkpoint.path, done, {"embedder": embedder}, optimizer, rng)
    log.close()
    barrier(context)
    return embedder.net.eval()
