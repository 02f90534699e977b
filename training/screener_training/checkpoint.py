"""Training checkpoints: weights, optimiser, step and random-generator states, so a run resumes exactly."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class CheckpointConfig:
    """Checkpoint file, save interval, resume flag and early stop of one stage."""

    path: Path | None = None
    # Save after every `every` steps and after the last one; 0 saves only after the last step.
    every: int = 0
    resume: bool = False
    # Stop after this many steps (the schedule still runs to the stage's total), e.g. to fit a job time limit.
    stop_after: int | None = None


def save_checkpoint(path: Path, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    rng: np.random.Generator) -> None:
    """Write the state after `step` completed steps; written to a temporary file first, then renamed."""
    state = {
        "step": step,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, temporary)
    temporary.replace(path)
    logger.info("Saved checkpoint after step %d to %s", step, path)


def load_checkpoint(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    rng: np.random.Generator) -> int:
    """Restore the state saved by save_checkpoint and return the number of completed steps."""
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint '{path}' not found; run the stage without --resume to start afresh.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = set(modules) - set(state["modules"])
    if missing:
        raise ValueError(f"Checkpoint '{path}' has no state for {sorted(missing)}; it belongs to another stage.")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    logger.info("Resumed from %s after step %d", path, state["step"])
    return int(state["step"])
