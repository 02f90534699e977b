"""Command line for training: `screener-train descriptor|condition|density|export|run|pack`.

The descriptor and condition stages are independent and can run in parallel. The
density stage loads both from the work folder and fits the density. Export
calibrates the scores and writes a model package, and the density stage exports
too when --output is given. `run` runs all of them in turn. Every stage runs under
torchrun for data-parallel training on several GPUs, nodes or CPU processes.
`pack` preprocesses the training CTs once into one volume pack file (--output), which
--data accepts in place of the CTs, for example on a GPU machine without the collection.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from ScreenerCore.errors import ScreenerError

from .distributed import init_distributed, shutdown_distributed
from .stages import run_density_stage, run_embedding_stage, run_export_stage, run_pack_stage

logger = logging.getLogger("screener_training")

STAGES = ["descriptor", "condition", "density", "export", "run", "pack"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--name", default="screener-ct-small", help="model name stored in config.json")
    group.add_argument("--spacing", nargs=3, type=float, default=[2.0, 2.0, 2.0], metavar=("X", "Y", "Z"),
                       help="model grid spacing in mm (default 2 2 2)")
    group.add_argument("--patch-size", type=int, default=96, help="inference patch edge in voxels (default 96)")
    group.add_argument("--overlap", type=float, default=0.25, help="inference patch overlap fraction (default 0.25)")
    group.add_argument("--score-smoothing-mm", type=float, default=0.0,
                       help="Gaussian sigma in mm for the score map at inference and calibration (default 0: off)")
    group.add_argument("--channels", nargs="+", type=int, default=[16, 32, 64],
                       help="U-Net widths per level (default 16 32 64)")
    group.add_argument("--descriptor-dim", type=int, default=32, help="descriptor size d (default 32)")
    group.add_argument("--condition-dim", type=int, default=32, help="masked condition feature size (default 32)")
    group.add_argument("--condition", choices=["none", "sincos", "masked"], default="masked",
                       help="none: marginal density; sincos: position in mm; masked: learned condition net")
    group.add_argument("--sincos-frequencies", type=int, default=8,
                       help="sin-cos frequencies per axis; the condition has 6 times as many channels (default 8)")
    group.add_argument("--sincos-max-wavelength", type=float, default=1000.0,
                       help="longest sin-cos wavelength in mm; each next one is half as long (default 1000)")
    group.add_argument("--density", choices=["gaussian", "flow"], default="gaussian")
    group.add_argument("--density-hidden", type=int, default=32,
                       help="hidden channels of the conditional Gaussian's and the flow's nets (default 32)")
    group.add_argument("--flow-steps", type=int, default=4, help="Glow steps of the flow density (default 4)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--objective", choices=["vicreg", "infonce"], default="vicreg",
                       help="descriptor and condition objective (default vicreg)")
    group.add_argument("--vicreg-weights", nargs=3, type=float, default=[25.0, 25.0, 1.0],
                       metavar=("INVARIANCE", "VARIANCE", "COVARIANCE"), help="VICReg term weights (default 25 25 1)")
    group.add_argument("--temperature", type=float, default=0.1, help="InfoNCE temperature (default 0.1)")
    group.add_argument("--projector-width", type=int, default=256, help="projector head width (default 256)")
    group.add_argument("--crop-size", type=int, default=48, help="training crop edge in voxels (default 48)")
    group.add_argument("--mask-ratio", type=float, default=0.6, help="fraction of blocks hidden for the condition net")
    group.add_argument("--mask-block-size", type=int, default=None,
                       help="edge in voxels of the hidden blocks (default: a quarter of --crop-size)")
    group.add_argument("--positions", type=int, default=256, help="paired positions per view pair (default 256)")
    group.add_argument("--volumes-per-step", type=int, default=4,
                       help="view pairs (descriptor, condition) or crops (density) per step and rank (default 4)")
    group.add_argument("--descriptor-steps", type=int, default=600)
    group.add_argument("--condition-steps", type=int, default=600)
    group.add_argument("--density-steps", type=int, default=300)
    group.add_argument("--calibration-crops", type=int, default=8, help="crops per volume for score quantiles")
    group.add_argument("--learning-rate", type=float, default=1e-3)
    group.add_argument("--gradient-clip", type=float, default=5.0, help="maximum gradient norm (default 5)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--no-mixed-precision", action="store_true", help="train in float32 on CUDA too")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data, outputs and runtime")
    group.add_argument("--data", nargs="+", required=True,
                       help="training CT files, folders (searched recursively) or CSV lists with a 'path' column")
    group.add_argument("--work-dir", required=True, help="folder for stage weights, logs, checkpoints and the cache")
    group.add_argument("--cache-dir", default=None,
                       help="folder for preprocessed volumes (default WORK_DIR/cache); share it between runs")
    group.add_argument("--descriptor-from", default=None,
                       help="work folder whose descriptor.safetensors the density and export stages use "
                            "(default --work-dir)")
    group.add_argument("--condition-from", default=None,
                       help="work folder whose condition.safetensors the density and export stages use "
                            "(default --work-dir)")
    group.add_argument("--output", help="model package folder written by the density, export and run stages, "
                       "or the .npz file written by the pack stage")
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="auto: this rank's GPU when CUDA is available, else CPU")
    group.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()),
                       help="CPU threads for torch per process (default: all)")
    group.add_argument("--checkpoint-every", type=int, default=0,
                       help="save a resumable checkpoint every N steps (default 0: only after the last step)")
    group.add_argument("--resume", action="store_true",
                       help="continue each stage from WORK_DIR/STAGE_checkpoint.pt on the same schedule")
    group.add_argument("--stop-after", type=int, default=None,
                       help="stop each stage after this many steps of its schedule, e.g. to fit a job time "
                            "limit; continue later with --resume")
    group.add_argument("--log-every", type=int, default=10, help="write a log row every N steps (default 10)")
    group.add_argument("--tensorboard", action="store_true",
                       help="also log to WORK_DIR/tensorboard (needs the tensorboard package)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="screener-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES,
                        help="stage to run; 'run' runs descriptor, condition (when masked), density and export; "
                             "'pack' writes the preprocessed training volumes to one file")
    add_run_arguments(parser)
    add_model_arguments(parser)
    add_training_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.stage in ("export", "run", "pack") and not args.output:
        parser.error(f"--output is required for the {args.stage} stage")
    if args.resume and args.stage == "run":
        parser.error("--resume applies to one stage; resume each stage with its own command")
    torch.set_num_threads(args.threads)

    context = init_distributed(args.device)
    try:
        if args.stage in ("descriptor", "run"):
            run_embedding_stage(args, "descriptor", context)
        if args.stage in ("condition", "run"):
            if args.condition == "masked":
                run_embedding_stage(args, "condition", context)
            else:
                logger.info("Condition '%s' has no net to train; skipping the condition stage", args.condition)
        if args.stage in ("density", "run"):
            run_density_stage(args, context)
        if args.stage == "export":
            run_export_stage(args, context)
        if args.stage == "pack":
            run_pack_stage(args, context)
    except ScreenerError as error:
        # Bad input (a missing file, a pack for another grid): one line, not a traceback.
        logger.error("%s", error)
        return 1
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
