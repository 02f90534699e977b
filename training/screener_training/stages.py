"""The training stages behind `screener-train`: descriptor, condition, density and export.

Each stage reads its inputs from and writes its weights to the work folder, so the
descriptor and condition stages can run in parallel and any stage can be rerun alone.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ScreenerCore.config import ConditionConfig, DensityConfig, ModelConfig, NetConfig, PreprocessingConfig
from ScreenerCore.models import ScreenerModel
from ScreenerCore.package import save_model_package
from ScreenerCore.preprocessing import hu_to_intensity

from .checkpoint import CheckpointConfig
from .data import TrainingVolume, load_training_volumes
from .density_training import calibrate, train_density
from .distributed import DistributedContext, barrier
from .embedding_training import train_embedding_net
from .losses import VicregWeights
from .model_card import write_model_card
from .packs import check_pack_suffix, write_volume_pack
from .train import StageConfig
from .views import ViewConfig

logger = logging.getLogger("screener_training")


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    spacing = tuple(float(s) for s in args.spacing)
    preprocessing = PreprocessingConfig(spacing_mm=spacing, patch_size=(args.patch_size,) * 3, overlap=args.overlap,
                                        score_smoothing_mm=getattr(args, "score_smoothing_mm", 0.0))
    descriptor = NetConfig(in_channels=1, out_channels=args.descriptor_dim, channels=tuple(args.channels))
    condition = ConditionConfig(kind=args.condition, frequencies=args.sincos_frequencies,
                                max_wavelength_mm=args.sincos_max_wavelength)
    if args.condition == "masked":
        condition.net = NetConfig(in_channels=2, out_channels=args.condition_dim, channels=tuple(args.channels))
    density = DensityConfig(kind=args.density, hidden_channels=args.density_hidden, flow_steps=args.flow_steps)
    return ModelConfig(name=args.name, preprocessing=preprocessing, descriptor=descriptor, condition=condition,
                       density=density)


def stage_config(args: argparse.Namespace, steps: int) -> StageConfig:
    return StageConfig(steps=steps, volumes_per_step=args.volumes_per_step, learning_rate=args.learning_rate,
                       seed=args.seed, objective=args.objective, vicreg=VicregWeights(*args.vicreg_weights),
                       infonce_temperature=args.temperature, projector_width=args.projector_width,
                       gradient_clip=args.gradient_clip, log_every=args.log_every,
                       mixed_precision=not args.no_mixed_precision)


def view_config(args: argparse.Namespace, masked: bool) -> ViewConfig:
    return ViewConfig(crop_size=args.crop_size, positions_per_pair=args.positions,
                      mask_ratio=args.mask_ratio if masked else 0.0, mask_block_size=args.mask_block_size)


def checkpoint_config(args: argparse.Namespace, work: Path, part: str) -> CheckpointConfig:
    """Checkpoint WORK_DIR/PART_checkpoint.pt when any checkpoint flag is set; otherwise save none."""
    wanted = args.checkpoint_every > 0 or args.resume or args.stop_after is not None
    return CheckpointConfig(path=work / f"{part}_checkpoint.pt" if wanted else None, every=args.checkpoint_every,
                            resume=args.resume, stop_after=args.stop_after)


def pad_value(config: ModelConfig) -> float:
    """Network intensity of air, used to pad crops that leave the volume."""
    return float(hu_to_intensity(np.array([-1024.0]), config.preprocessing)[0])


def load_volumes(args: argparse.Namespace, config: ModelConfig, context: DistributedContext) -> list[TrainingVolume]:
    cache = Path(args.cache_dir) if args.cache_dir else Path(args.work_dir) / "cache"
    return load_training_volumes(args.data, config.preprocessing, cache, context.rank, context.world_size)


def tensorboard_dir(args: argparse.Namespace, part: str) -> Path | None:
    return Path(args.work_dir) / "tensorboard" / part if args.tensorboard else None


def save_weights(module: torch.nn.Module, path: Path) -> None:
    save_file({key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}, str(path))


def load_weights(module: torch.nn.Module, path: Path, part: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{part} weights '{path}' not found; run `screener-train {part}` with this "
                                "--work-dir first, or point --descriptor-from / --condition-from at its work folder.")
    try:
        module.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise RuntimeError(f"{part} weights '{path}' do not fit the architecture given by the flags "
                           f"(--descriptor-dim, --condition-dim, --channels): {error}") from error


def run_embedding_stage(args: argparse.Namespace, part: str, context: DistributedContext) -> None:
    """Train the descriptor or the masked condition net and save it as PART.safetensors in the work folder."""
    config = model_config_from_args(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    volumes = load_volumes(args, config, context)

    net_config = config.descriptor if part == "descriptor" else config.condition.net
    steps = args.descriptor_steps if part == "descriptor" else args.condition_steps
    started = time.perf_counter()
    net = train_embedding_net(net_config, volumes, view_config(args, masked=part == "condition"),
                              stage_config(args, steps), pad_value(config), work / f"{part}_log.csv", part,
                              context, checkpoint_config(args, work, part), tensorboard_dir(args, part))
    if context.is_main:
        save_weights(net, work / f"{part}.safetensors")
        (work / f"{part}_seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
        logger.info("Saved %s net to %s after %.0f s", part, work, time.perf_counter() - started)
    barrier(context)


def load_trained_model(args: argparse.Namespace, config: ModelConfig, with_density: bool) -> ScreenerModel:
    """Build the model of `config` with the descriptor and condition weights of earlier stages."""
    work = Path(args.work_dir)
    # Seeded, so the density's initial weights (the only ones not loaded here) repeat from run to run.
    torch.manual_seed(args.seed)
    model = ScreenerModel(config)
    load_weights(model.descriptor, Path(args.descriptor_from or work) / "descriptor.safetensors", "descriptor")
    if model.condition is not None:
        load_weights(model.condition, Path(args.condition_from or work) / "condition.safetensors", "condition")
    if with_density:
        load_weights(model.density, work / "density.safetensors", "density")
    return model


def run_density_stage(args: argparse.Namespace, context: DistributedContext) -> None:
    """Fit the density on the frozen nets, save density.safetensors, and export when --output is set."""
    config = model_config_from_args(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    volumes = load_volumes(args, config, context)
    model = load_trained_model(args, config, with_density=False)

    started = time.perf_counter()
    train_density(model, volumes, args.crop_size, stage_config(args, args.density_steps), pad_value(config),
                  work / "density_log.csv", context, checkpoint_config(args, work, "density"),
                  tensorboard_dir(args, "density"))
    if context.is_main:
        save_weights(model.density, work / "density.safetensors")
        (work / "density_seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
    barrier(context)
    if args.output:
        export_package(args, config, model, volumes, context)


def run_export_stage(args: argparse.Namespace, context: DistributedContext) -> None:
    """Calibrate the trained model of the work folder and write it as a model package."""
    config = model_config_from_args(args)
    volumes = load_volumes(args, config, context)
    export_package(args, config, load_trained_model(args, config, with_density=True), volumes, context)


def run_pack_stage(args: argparse.Namespace, context: DistributedContext) -> None:
    """Preprocess every training CT onto the model grid and write them all to the pack file --output."""
    if context.is_distributed:
        raise SystemExit("The pack stage runs in one process; start it without torchrun.")
    # Checked before any CT is read, which can take minutes for a large collection.
    check_pack_suffix(Path(args.output))
    config = model_config_from_args(args)
    write_volume_pack(load_volumes(args, config, context), config.preprocessing, args.output)


def export_package(args: argparse.Namespace, config: ModelConfig, model: ScreenerModel,
                   volumes: list[TrainingVolume], context: DistributedContext) -> None:
    """Calibrate scores on training voxels in the body and write the package to --output (rank 0)."""
    calibration = calibrate(model, volumes, min(args.patch_size, 64), args.calibration_crops, pad_value(config),
                            seed=args.seed, context=context)
    if not context.is_main:
        return
    work = Path(args.work_dir)
    config.calibration = calibration.to_config()
    config.provenance = {
        "training_data": [v.name for v in volumes] if context.world_size == 1 else [str(s) for s in args.data],
        "command": " ".join(sys.argv),
        "code_revision": git_revision(),
        "stage_seconds": {
            "descriptor": read_seconds(Path(args.descriptor_from or work), "descriptor"),
            "condition": read_seconds(Path(args.condition_from or work), "condition"),
            "density": read_seconds(work, "density"),
        },
    }
    model.config = config
    save_model_package(model.cpu(), args.output)
    write_model_card(Path(args.output), config)
    logger.info("Exported model package to %s", args.output)


def read_seconds(work: Path, part: str) -> float | None:
    path = work / f"{part}_seconds.txt"
    return float(path.read_text()) if path.is_file() else None


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
