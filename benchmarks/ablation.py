"""Short-budget ablation of Screener's components: objective, descriptor size, condition and density.

Usage:
    python benchmarks/ablation.py [--work-root DIR] [--results DIR] [--threads N] [--only NAME ...]

Trains on the training CTs, scores the evaluation CTs with `screener evaluate`, and
writes, under --results, one CSV per row, ablation.csv (pooled rows of all
configurations), ablation.md (the table) and ablation_commands.md (every command
with its wall time). Every configuration gets the same budget: the step counts,
crop size and batch sizes in BUDGET. Stages that several rows share (the VICReg
d=32 descriptor, the masked condition net) are trained once, and their time counts
in every row that uses them. A stage whose output exists is not run again, so an
interrupted ablation continues where it stopped.

The evaluation volumes are for measuring only; no stage here reads them for training.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = REPO_ROOT.parent / "shared" / "data" / "ct"

# One budget for every configuration, sized so that the whole table takes about an hour on one
# CPU thread. That is an estimate from a trial run on the 2-core test machine, where one
# U-Net pass over a 96-voxel patch with the default widths (16 32 64) took about 5 to 20 s
# depending on load. Half-width nets (8 16 32) cost about a quarter of that, in training
# and in scoring the evaluation CTs alike.
BUDGET = {
    "--channels": "8 16 32",
    "--crop-size": "32",
    "--positions": "256",
    "--volumes-per-step": "3",
    "--descriptor-steps": "200",
    "--condition-steps": "200",
    "--density-steps": "120",
    "--calibration-crops": "2",
    "--patch-size": "96",
    "--seed": "0",
}

logger = logging.getLogger("ablation")


# Flags that only the condition net reads.
MASKING_FLAGS = ("--mask-block-size", "--mask-ratio")


@dataclass(frozen=True)
class Row:
    """One configuration of the table."""

    name: str
    objective: str
    descriptor_dim: int
    condition: str
    density: str
    # Model grid spacing in mm; 2 mm unless a row tests a coarser descriptor grid.
    spacing_mm: float = 2.0
    # Flags that replace the budget's values for this row (argparse keeps the last occurrence).
    extra: tuple[str, ...] = ()

    @property
    def spacing_suffix(self) -> str:
        return "" if self.spacing_mm == 2.0 else f"-{self.spacing_mm:g}mm"

    @property
    def descriptor_key(self) -> str:
        """Work folder name of the row's descriptor; rows whose descriptor flags agree share it."""
        return f"{self.objective}{self.descriptor_dim}{self.spacing_suffix}" + "".join(
            f"-{token.lstrip('-')}" for token in self.descriptor_flags)

    @property
    def descriptor_flags(self) -> list[str]:
        """The extra flags (with their values) that change the descriptor: all but the masking ones."""
        flags, skip = [], False
        for token in self.extra:
            if token.startswith("--"):
                skip = token in MASKING_FLAGS
            if not skip:
                flags.append(token)
        return flags

    @property
    def condition_key(self) -> str:
        return f"condition-{self.name}" if self.extra else f"condition{self.spacing_suffix}"



ROWS = [
    *(Row(f"vicreg32-{condition}-{density}", "vicreg", 32, condition, density)
      for condition in ("none", "sincos", "masked") for density in ("gaussian", "flow")),
    Row("infonce32-masked-flow", "infonce", 32, "masked", "flow"),
    Row("vicreg128-masked-flow", "vicreg", 128, "masked", "flow"),
    # InfoNCE in the cheapest setting, comparable with vicreg32-none-gaussian at a fraction of the cost.
    Row("infonce32-none-gaussian", "infonce", 32, "none", "gaussian"),
    # Levers of the quality work: the InfoNCE descriptor with the masked condition net, and the
    # same descriptor on a 4 mm grid, which doubles the receptive field in mm at the same cost per step.
    Row("infonce32-masked-gaussian", "infonce", 32, "masked", "gaussian"),
    Row("infonce32-none-gaussian-4mm", "infonce", 32, "none", "gaussian", spacing_mm=4.0),
    # Receptive field, context and training length, one at a time against infonce32-none-gaussian:
    # a fourth U-Net level, 48-voxel training crops, full-width nets, and 5 times the steps.
    Row("infonce32-none-gaussian-deep", "infonce", 32, "none", "gaussian", extra=("--channels", "8", "16", "32", "64")),
    Row("infonce32-none-gaussian-crop48", "infonce", 32, "none", "gaussian", extra=("--crop-size", "48")),
    Row("infonce32-none-gaussian-wide", "infonce", 32, "none", "gaussian", extra=("--channels", "16", "32", "64")),
    Row("infonce32-none-gaussian-long", "infonce", 32, "none", "gaussian",
        extra=("--descriptor-steps", "1000", "--density-steps", "600")),
    # Still more context per training crop: 64 voxels (128 mm).
    Row("infonce32-none-gaussian-crop64", "infonce", 32, "none", "gaussian", extra=("--crop-size", "64")),
    # The larger crop with the masked condition net (its blocks grow with the crop to 12 voxels).
    Row("infonce32-masked-gaussian-crop48", "infonce", 32, "masked", "gaussian", extra=("--crop-size", "48")),
    # Masking strength of the condition net: 16-voxel blocks (32 mm, half the crop) instead of the
    # default quarter of the crop, at 60 % and at 80 % hidden, so less of a lesion shows through.
    Row("infonce32-masked16-gaussian", "infonce", 32, "masked", "gaussian", extra=("--mask-block-size", "16")),
    Row("infonce32-masked16r80-gaussian", "infonce", 32, "masked", "gaussian",
        extra=("--mask-block-size", "16", "--mask-ratio", "0.8")),
]
BASELINE = "intensity-baseline"
# The flags of the shared condition-net stage (only --objective and the budget matter to it).
CONDITION_ROW = Row("condition", "vicreg", 32, "masked", "gaussian")


class Runner:
    """Runs commands with a fixed thread count, logging each with its wall time."""

    def __init__(self, threads: int, log_path: Path, dry_run: bool = False):
        self.threads = threads
        # In a dry run nothing is started: run() returns stored times and raises for stages not done.
        self.dry_run = dry_run
        self.log_path = log_path
        self.environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def run(self, command: list[str], done_marker: Path, timing_file: Path) -> float:
        """Run `command` unless `done_marker` exists; return its wall time in s (stored in timing_file)."""
        if done_marker.exists() and timing_file.is_file():
            logger.info("Skipping (done): %s", shlex.join(command))
            return float(timing_file.read_text())
        if self.dry_run:
            raise FileNotFoundError(f"Stage not done: {shlex.join(command)}")
        logger.info("Running: %s", shlex.join(command))
        started = time.perf_counter()
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            subprocess.run(command, stdout=log, stderr=log, env=self.environment, cwd=REPO_ROOT, check=True)
        seconds = time.perf_counter() - started
        timing_file.parent.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(f"{seconds:.1f}\n")
        logger.info("Finished in %.0f s", seconds)
        return seconds


def budget_flags() -> list[str]:
    return [item for flag, value in BUDGET.items() for item in (flag, *value.split())]


def installed_command(name: str) -> str:
    """Return `name` when it is on PATH, else its path beside this Python (a venv not activated)."""
    beside = Path(sys.executable).with_name(name)
    return name if shutil.which(name) or not beside.is_file() else str(beside)


def train_command(stage: str, row: Row, work: Path, cache: Path, threads: int, extra: list[str],
                  data: list[str] | None = None) -> list[str]:
    """Return the screener-train command of one stage; `data` defaults to all training CTs."""
    data = data or [str(SHARED_CT / "train")]
    return [installed_command("screener-train"), stage, "--data", *data, "--work-dir", str(work),
            "--cache-dir", str(cache), "--threads", str(threads), "--device", "cpu", "--log-every", "10",
            "--objective", row.objective, "--descriptor-dim", str(row.descriptor_dim), "--condition", row.condition,
            "--density", row.density, "--spacing", *[f"{row.spacing_mm:g}"] * 3, "--name", f"ablation-{row.name}",
            *budget_flags(), *row.extra, *extra]


def evaluate_command(name: str, package: Path | None, results: Path) -> list[str]:
    scorer = ["--baseline", "intensity"] if package is None else ["--model", str(package), "--device", "cpu"]
    return [installed_command("screener"), "evaluate", str(SHARED_CT / "eval"), *scorer, "--name", name,
            "--csv", str(results / f"{name}.csv")]


def train_row(row: Row, runner: Runner, work_root: Path, cache: Path, commands: list[dict],
              data: list[str] | None = None) -> tuple[Path, dict]:
    """Train the row's stages under `work_root` (shared stages once) and export its package.

    `data` defaults to all training CTs. Each command is appended to `commands`. Returns the
    package folder and the wall time of each stage.
    """
    descriptor_work = work_root / row.descriptor_key
    condition_work = work_root / row.condition_key
    row_work = work_root / row.name
    package = row_work / "package"
    times = {}

    command = train_command("descriptor", row, descriptor_work, cache, runner.threads, [], data)
    times["descriptor"] = runner.run(command, descriptor_work / "descriptor.safetensors",
                                     descriptor_work / "descriptor.wall_s")
    commands.append({"row": row.name, "stage": "descriptor", "command": shlex.join(command),
                     "seconds": times["descriptor"]})
    if row.condition == "masked":
        # The condition net does not depend on the descriptor, so every masked row shares one.
        condition_row = dataclasses.replace(CONDITION_ROW, spacing_mm=row.spacing_mm, extra=row.extra)
        command = train_command("condition", condition_row, condition_work, cache, runner.threads, [], data)
        times["condition"] = runner.run(command, condition_work / "condition.safetensors",
                                        condition_work / "condition.wall_s")
        commands.append({"row": row.name, "stage": "condition", "command": shlex.join(command),
                         "seconds": times["condition"]})

    command = train_command("density", row, row_work, cache, runner.threads,
                            ["--descriptor-from", str(descriptor_work), "--condition-from", str(condition_work),
                             "--output", str(package)], data)
    times["density"] = runner.run(command, package / "checksums.json", row_work / "density.wall_s")
    commands.append({"row": row.name, "stage": "density and export", "command": shlex.join(command),
                     "seconds": times["density"]})
    return package, times


def run_row(row: Row, runner: Runner, work_root: Path, cache: Path, results: Path, commands: list[dict]) -> dict:
    """Train what the row needs, export, evaluate; return its stage times."""
    package, times = train_row(row, runner, work_root, cache, commands)

    command = evaluate_command(row.name, package, results)
    times["evaluate"] = runner.run(command, results / f"{row.name}.csv", work_root / row.name / "evaluate.wall_s")
    commands.append({"row": row.name, "stage": "evaluate", "command": shlex.join(command),
                     "seconds": times["evaluate"]})
    return times


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_earlier_tables(results: Path) -> tuple[dict[str, dict], list[dict]]:
    """Return the rows of ablation.csv and the command entries of ablation_commands.md from earlier runs.

    A run of a few rows (--only) rewrites the tables, and the rows it did not run must stay in them.
    """
    rows = {}
    if (results / "ablation.csv").is_file():
        rows = {row["configuration"]: row for row in read_rows(results / "ablation.csv")}
    commands = []
    path = results / "ablation_commands.md"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[2:]:
            # "| row | stage | seconds | `command` |"
            row, stage, seconds, command = line.strip("| ").split(" | ", 3)
            commands.append({"row": row, "stage": stage, "seconds": float(seconds), "command": command.strip("`")})
    return rows, commands


def write_tables(results: Path, row_times: dict[str, dict], commands: list[dict]) -> None:
    """Write ablation.csv and ablation.md from the per-row evaluation CSVs, keeping earlier runs' rows."""
    earlier_rows, earlier_commands = read_earlier_tables(results)
    table = []
    for name, times in row_times.items():
        evaluated = {(r["case"]): r for r in read_rows(results / f"{name}.csv")}
        training = sum(seconds for stage, seconds in times.items() if stage != "evaluate")
        table.append({
            "configuration": name,
            "lung1_auroc": evaluated["lung1"]["auroc"], "lung2_auroc": evaluated["lung2"]["auroc"],
            "pooled_auroc": evaluated["pooled"]["auroc"],
            "lung1_partial_auroc": evaluated["lung1"]["partial_auroc"],
            "lung2_partial_auroc": evaluated["lung2"]["partial_auroc"],
            "pooled_partial_auroc": evaluated["pooled"]["partial_auroc"],
            "pooled_aupro": evaluated["pooled"]["aupro"],
            "training_s": round(training), "evaluation_s": round(times.get("evaluate", 0.0)),
        })
    table += [row for name, row in earlier_rows.items() if name not in row_times]
    order = [BASELINE, *(row.name for row in ROWS)]
    table.sort(key=lambda entry: order.index(entry["configuration"]) if entry["configuration"] in order else len(order))
    commands = [entry for entry in earlier_commands if entry["row"] not in row_times] + commands
    commands.sort(key=lambda entry: order.index(entry["row"]) if entry["row"] in order else len(order))
    with open(results / "ablation.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)

    lines = ["| configuration | AUROC lung1 | AUROC lung2 | AUROC pooled | AUROC@0.3 lung1 | AUROC@0.3 lung2 | "
             "AUROC@0.3 pooled | AUPRO@0.3 pooled | training s | evaluation s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in table:
        values = list(entry.values())
        lines.append("| " + " | ".join(str(v) for v in values) + " |")
    (results / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    command_lines = ["| configuration | stage | wall s | command |", "|---|---|---|---|"]
    for entry in commands:
        command_lines.append(f"| {entry['row']} | {entry['stage']} | {entry['seconds']:.0f} | `{entry['command']}` |")
    (results / "ablation_commands.md").write_text("\n".join(command_lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-root", type=Path, default=Path("/tmp/screener_ablation"),
                        help="folder for trained nets, packages and the preprocessing cache")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "ablation_results",
                        help="folder for the CSV and markdown results")
    # One thread by default: on the 2-core test machine, shared with other jobs, a 2-thread descriptor
    # step took about 24 s and a 1-thread step about 2.4 s, because OpenMP threads wait for each other.
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command (default 1)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these configurations (names as in ROWS)")
    parser.add_argument("--tables-only", action="store_true",
                        help="start nothing; write the tables from the rows already finished")
    parser.add_argument("--shared-only", action="store_true",
                        help="train only the shared stages (descriptors, masked condition net) of the selected "
                             "rows, e.g. in a second process beside a running ablation, which then skips them")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="preprocessing cache shared with other runs (default WORK_ROOT/cache)")
    parser.add_argument("--override", nargs="+", default=[], metavar="FLAG=VALUE",
                        help="change the budget for a quick check, e.g. descriptor-steps=2; "
                             "results are then not comparable with the table")
    args = parser.parse_args(argv)
    for item in args.override:
        flag, _, value = item.partition("=")
        if f"--{flag}" not in BUDGET or not value:
            parser.error(f"--override '{item}' is invalid; use FLAG=VALUE with FLAG one of "
                         f"{', '.join(key[2:] for key in BUDGET)}")
        BUDGET[f"--{flag}"] = value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    args.results.mkdir(parents=True, exist_ok=True)
    args.work_root.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.threads, args.results / "ablation.log", dry_run=args.tables_only)
    (args.results / "budget.json").write_text(json.dumps({"budget": BUDGET, "threads": args.threads}, indent=2) + "\n")

    if args.shared_only:
        cache = args.cache_dir or args.work_root / "cache"
        selected = [row for row in ROWS if not args.only or row.name in args.only]
        for row in selected:
            work = args.work_root / row.descriptor_key
            runner.run(train_command("descriptor", row, work, cache, runner.threads, []),
                       work / "descriptor.safetensors", work / "descriptor.wall_s")
        if any(row.condition == "masked" for row in selected):
            work = args.work_root / "condition"
            runner.run(train_command("condition", CONDITION_ROW, work, cache, runner.threads, []),
                       work / "condition.safetensors", work / "condition.wall_s")
        return 0

    row_times, commands = {}, []
    # The baseline first: it takes seconds, and the table has its reference row even if a run stops early.
    if not args.only or BASELINE in args.only:
        command = evaluate_command(BASELINE, None, args.results)
        try:
            seconds = runner.run(command, args.results / f"{BASELINE}.csv", args.work_root / "baseline.wall_s")
            commands.append({"row": BASELINE, "stage": "evaluate", "command": shlex.join(command),
                             "seconds": seconds})
            row_times[BASELINE] = {"evaluate": seconds}
        except FileNotFoundError as error:
            if not args.tables_only:
                raise
            logger.warning("Keeping the earlier %s row: %s", BASELINE, error)
    for row in ROWS:
        if args.only and row.name not in args.only:
            continue
        try:
            row_times[row.name] = run_row(row, runner, args.work_root, args.cache_dir or args.work_root / "cache",
                                          args.results, commands)
        except FileNotFoundError as error:
            if not args.tables_only:
                raise
            logger.warning("Leaving %s out of the tables: %s", row.name, error)
            commands[:] = [entry for entry in commands if entry["row"] != row.name]
            continue
        write_tables(args.results, row_times, commands)
    write_tables(args.results, row_times, commands)
    logger.info("Ablation finished; table in %s", args.results / "ablation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
