"""Command line for training: `screener-train descriptor|condition|density|run`.

The descriptor and condition stages are independent and can run in parallel; the
density stage loads both from the work folder, fits the density, calibrates the
scores and exports a model package.
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

from .data import load_training_volumes
from .model_card import write_model_card
from .train import StageConfig, calibrate, train_density, train_embedding_net
from .views import ViewConfig

logger = logging.getLogger("screener_training")


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    spacing = tuple(float(s) for s in args.spacing)
    preprocessing = PreprocessingConfig(spacing_mm=spacing, patch_size=(args.patch_size,) * 3, overlap=args.overlap)
    descriptor = NetConfig(in_channels=1, out_channels=args.descriptor_dim, channels=tuple(args.channels))
    condition = ConditionConfig(kind=args.condition)
    if args.condition == "masked":
        condition.net = NetConfig(in_channels=2, out_channels=args.condition_dim, channels=tuple(args.channels))
    density = DensityConfig(kind=args.density)
    return ModelConfig(name=args.name, preprocessing=preprocessing, descriptor=descriptor, condition=condition,
                       density=density)


def stage_config(args: argparse.Namespace, steps: int) -> StageConfig:
    return StageConfig(steps=steps, volumes_per_step=args.volumes_per_step, learning_rate=args.learning_rate,
                       seed=args.seed, objective=args.objective)


def view_config(args: argparse.Namespace, masked: bool) -> ViewConfig:
    return ViewConfig(crop_size=args.crop_size, positions_per_pair=args.positions,
                      mask_ratio=args.mask_ratio if masked else 0.0)


def pad_value(config: ModelConfig) -> float:
    """Network intensity of air, used to pad crops that leave the volume."""
    return float(hu_to_intensity(np.array([-1024.0]), config.preprocessing)[0])


def run_embedding_stage(args: argparse.Namespace, part: str) -> None:
    config = model_config_from_args(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    volumes = load_training_volumes(args.data, config.preprocessing, work / "cache")
    torch.set_num_threads(args.threads)

    net_config = config.descriptor if part == "descriptor" else config.condition.net
    steps = args.descriptor_steps if part == "descriptor" else args.condition_steps
    started = time.perf_counter()
    net = train_embedding_net(net_config, volumes, view_config(args, masked=part == "condition"),
                              stage_config(args, steps), pad_value(config), work / f"{part}_log.csv", part)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(work / f"{part}.safetensors"))
    (work / f"{part}_seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
    logger.info("Saved %s net to %s after %.0f s", part, work, time.perf_counter() - started)


def run_density_stage(args: argparse.Namespace) -> None:
    config = model_config_from_args(args)
    work = Path(args.work_dir)
    volumes = load_training_volumes(args.data, config.preprocessing, work / "cache")
    torch.set_num_threads(args.threads)

    model = ScreenerModel(config)
    model.descriptor.load_state_dict(load_file(str(work / "descriptor.safetensors")))
    if model.condition is not None:
        model.condition.load_state_dict(load_file(str(work / "condition.safetensors")))
    started = time.perf_counter()
    train_density(model, volumes, args.crop_size, stage_config(args, args.density_steps), pad_value(config),
                  work / "density_log.csv")
    calibration = calibrate(model, volumes, min(args.patch_size, 64), args.calibration_crops, pad_value(config),
                            seed=args.seed)
    (work / "density_seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")

    config.calibration = calibration.to_config()
    config.provenance = {
        "training_data": [v.name for v in volumes],
        "command": " ".join(sys.argv),
        "code_revision": git_revision(),
        "stage_seconds": {part: read_seconds(work, part) for part in ("descriptor", "condition", "density")},
    }
    model.config = config
    save_model_package(model, args.output)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="screener-train", description=__doc__)
    parser.add_argument("stage", choices=["descriptor", "condition", "density", "run"],
                        help="stage to run; 'run' runs descriptor, condition and density in turn")
    parser.add_argument("--data", nargs="+", required=True,
                        help="training CT files, folders (searched recursively) or CSV lists with a 'path' column")
    parser.add_argument("--work-dir", required=True, help="folder for stage weights, logs and the preprocessing cache")
    parser.add_argument("--output", help="model package folder written by the density stage")
    parser.add_argument("--name", default="screener-ct-small", help="model name stored in config.json")
    parser.add_argument("--spacing", nargs=3, type=float, default=[2.0, 2.0, 2.0], metavar=("X", "Y", "Z"),
                        help="model grid spacing in mm (default 2 2 2)")
    parser.add_argument("--patch-size", type=int, default=96, help="inference patch edge in voxels (default 96)")
    parser.add_argument("--overlap", type=float, default=0.25, help="inference patch overlap fraction (default 0.25)")
    parser.add_argument("--crop-size", type=int, default=48, help="training crop edge in voxels (default 48)")
    parser.add_argument("--channels", nargs="+", type=int, default=[16, 32, 64],
                        help="U-Net widths per level (default 16 32 64)")
    parser.add_argument("--descriptor-dim", type=int, default=32, help="descriptor size d (default 32)")
    parser.add_argument("--condition-dim", type=int, default=32, help="condition feature size (default 32)")
    parser.add_argument("--condition", choices=["none", "sincos", "masked"], default="masked")
    parser.add_argument("--density", choices=["gaussian", "flow"], default="gaussian")
    parser.add_argument("--objective", choices=["vicreg", "infonce"], default="vicreg")
    parser.add_argument("--mask-ratio", type=float, default=0.6, help="fraction of blocks hidden for the condition net")
    parser.add_argument("--positions", type=int, default=256, help="paired positions per view pair (default 256)")
    parser.add_argument("--volumes-per-step", type=int, default=4, help="view pairs per step (default 4)")
    parser.add_argument("--descriptor-steps", type=int, default=600)
    parser.add_argument("--condition-steps", type=int, default=600)
    parser.add_argument("--density-steps", type=int, default=300)
    parser.add_argument("--calibration-crops", type=int, default=8, help="crops per volume for score quantiles")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()),
                        help="CPU threads for torch (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.stage in ("density", "run") and not args.output:
        build_parser().error("--output is required for the density and run stages")
    if args.stage in ("descriptor", "run"):
        run_embedding_stage(args, "descriptor")
    if args.stage in ("condition", "run") and args.condition == "masked":
        run_embedding_stage(args, "condition")
    if args.stage in ("density", "run"):
        run_density_stage(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
