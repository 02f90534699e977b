"""Scoring many CTs with one `screener predict`: a folder or CSV list in, one map per scan out.

The next scan is read in a background thread while the current one is scored. A
rerun skips scans whose outputs are complete, so an interrupted job resumes where it
stopped. Under `torchrun` (or any launcher that sets RANK and WORLD_SIZE) each rank
scores every WORLD_SIZE-th scan of the sorted list, on the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from .errors import InputError, ScreenerError
from .io import IMAGE_SUFFIXES, OUTPUT_SUFFIXES, has_suffix, read_ct

logger = logging.getLogger(__name__)

DEFAULT_MAP_SUFFIX = ".nii.gz"
# Column of a CSV list with the input paths; a CSV without it uses its first column.
INPUT_COLUMN = "input"
# Optional column with each scan's map path; relative paths are under the output folder.
OUTPUT_COLUMN = "output"


@dataclass
class BatchItem:
    """One scan of a batch and the files it gets."""

    input: Path
    output: Path
    findings: Path | None = None
    preview: Path | None = None


def is_batch_input(path: Path) -> bool:
    """Return True for a CSV list, or a folder holding image files (a DICOM folder has none)."""
    if path.is_file():
        return path.suffix.lower() == ".csv"
    if path.is_dir():
        return any(child.is_file() and has_suffix(child, IMAGE_SUFFIXES) for child in path.iterdir())
    return False


def scan_stem(path: Path) -> str:
    """Return the file name without its image suffix ("chest.nii.gz" -> "chest")."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


def read_input_list(csv_path: Path) -> list[tuple[Path, str | None]]:
    """Read (input path, output path or None) rows from a CSV list; relative inputs are under the CSV's folder."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(f"CSV list '{csv_path}' has no rows. Put one CT path per line, "
                         f"optionally under a header '{INPUT_COLUMN},{OUTPUT_COLUMN}'.")

    header = [cell.strip().lower() for cell in rows[0]]
    input_index, output_index = 0, None
    if INPUT_COLUMN in header:
        input_index = header.index(INPUT_COLUMN)
        output_index = header.index(OUTPUT_COLUMN) if OUTPUT_COLUMN in header else None
        rows = rows[1:]

    entries = []
    for row in rows:
        source = Path(row[input_index].strip())
        if not source.is_absolute():
            source = csv_path.parent / source
        target = row[output_index].strip() if output_index is not None and output_index < len(row) else None
        entries.append((source, target or None))
    return entries


def plan_batch(source: Path, output_dir: Path, findings_dir: Path | None = None, preview_dir: Path | None = None,
               map_suffix: str = DEFAULT_MAP_SUFFIX) -> list[BatchItem]:
    """List the scans of a folder or CSV list with the files each gets, sorted by input path.

    Maps go to `output_dir` as <scan name><map_suffix> unless a CSV row names its own;
    findings (CSV) and previews (PNG) go to their folders under the same name. Raises
    InputError when two scans would write the same map.
    """
    if not has_suffix(Path(f"x{map_suffix}"), OUTPUT_SUFFIXES):
        raise InputError(f"Map suffix '{map_suffix}' is not supported; use one of {', '.join(OUTPUT_SUFFIXES)}.")
    if source.is_dir():
        entries = [(path, None) for path in source.iterdir() if path.is_file() and has_suffix(path, IMAGE_SUFFIXES)]
    else:
        entries = read_input_list(source)

    items = []
    for path, target in sorted(entries, key=lambda entry: str(entry[0])):
        stem = scan_stem(path)
        output = Path(target) if target else Path(f"{stem}{map_suffix}")
        if not output.is_absolute():
            output = output_dir / output
        items.append(BatchItem(
            input=path, output=output,
            findings=findings_dir / f"{stem}.csv" if findings_dir is not None else None,
            preview=preview_dir / f"{stem}.png" if preview_dir is not None else None,
        ))

    seen: dict[Path, Path] = {}
    for item in items:
        if item.output in seen:
            raise InputError(f"Scans '{seen[item.output]}' and '{item.input}' would both write '{item.output}'. "
                             "Rename one, or give each its own output in an 'output' column of a CSV list.")
        seen[item.output] = item.input
    return items


def distributed_shard() -> tuple[int, int, int | None]:
    """Return (rank, world size, local rank or None) from the variables torchrun sets; (0, 1, None) without them."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    except ValueError as error:
        raise InputError(f"RANK, WORLD_SIZE or LOCAL_RANK is not an integer ({error}); "
                         "start the job with torchrun or unset them.") from error
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size}); start the job with torchrun.")
    return rank, world_size, local_rank


def shard(items: list[BatchItem], rank: int, world_size: int) -> list[BatchItem]:
    """Return the scans of `rank`: every world_size-th, so shards differ in size by at most one scan."""
    return items[rank::world_size]


def is_complete(item: BatchItem) -> bool:
    """Return True when every output file of `item` exists and its map's header can be read.

    Maps are written to a temporary file and renamed, so an existing map is whole. The
    header check also rejects files that another tool left truncated.
    """
    extras = [path for path in (item.findings, item.preview) if path is not None]
    if not item.output.is_file() or not all(path.is_file() and path.stat().st_size > 0 for path in extras):
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(item.output))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return reader.GetDimension() == 3


# score(item, image) writes the item's outputs; read(path) returns the image.
ScoreScan = Callable[[BatchItem, sitk.Image], None]
ReadScan = Callable[[Path], sitk.Image]


def run_items(items: list[BatchItem], score: ScoreScan, read: ReadScan = read_ct, overwrite: bool = False,
              on_scan: Callable[..., None] | None = None) -> dict[str, list[Path]]:
    """Score `items` in order, reading the next scan in a background thread while one is scored.

    A scan that fails to read or score is logged and left out; the others still run.
    Returns the inputs per status: "done", "skipped" (complete outputs) and "failed".
    `on_scan(status, index, total, item, error)` is called after each scan.
    """
    status: dict[str, list[Path]] = {"done": [], "skipped": [], "failed": []}
    pending = [item for item in items if overwrite or not is_complete(item)]
    for item in items:
        if item not in pending:
            status["skipped"].append(item.input)
            logger.info("Skipping %s: %s is complete", item.input, item.output)
            if on_scan is not None:
                on_scan("skipped", items.index(item), len(items), item, None)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="screener-read") as reader:
        next_image: Future | None = reader.submit(read, pending[0].input) if pending else None
        for index, item in enumerate(pending):
            current = next_image
            next_image = reader.submit(read, pending[index + 1].input) if index + 1 < len(pending) else None
            error = None
            try:
                score(item, current.result())
                status["done"].append(item.input)
            except (ScreenerError, ValueError, RuntimeError, OSError) as caught:
                error = caught
                status["failed"].append(item.input)
                logger.error("Scoring %s failed: %s", item.input, caught)
            if on_scan is not None:
                on_scan("failed" if error else "done", items.index(item), len(items), item, error)
    return status


def item_arguments(args: argparse.Namespace, item: BatchItem) -> argparse.Namespace:
    """Return a copy of the batch's CLI arguments with one scan's input and output paths."""
    scan_args = copy.copy(args)
    scan_args.input = str(item.input)
    scan_args.output = str(item.output)
    scan_args.findings = str(item.findings) if item.findings is not None else None
    scan_args.preview = str(item.preview) if item.preview is not None else None
    return scan_args


def rank_device(device: str, local_rank: int | None) -> str:
    """Return `device`, or cuda:LOCAL_RANK for "auto", "cuda" or "gpu" when a launcher started several ranks."""
    import torch  # noqa: PLC0415 - keeps this module importable for planning without loading torch

    if local_rank is None or device not in ("auto", "cuda", "gpu") or not torch.cuda.is_available():
        return device
    return f"cuda:{local_rank % torch.cuda.device_count()}"


def run_batch(args: argparse.Namespace, predict_scan: Callable[..., int]) -> int:
    """Run `screener predict` over the folder or CSV list in args.input; return the exit status.

    `predict_scan(args, image=..., loaded=...)` scores one scan and writes its outputs.
    The model is loaded once per process. Returns 0 when every scan of this rank's shard
    is done or skipped, 1 when any failed.
    """
    from .device import resolve_device  # noqa: PLC0415 - torch-heavy imports only when scoring
    from .registry import load_model  # noqa: PLC0415

    output_dir = Path(args.output)
    if has_suffix(output_dir, OUTPUT_SUFFIXES):
        raise InputError(f"'{args.input}' lists several scans, so -o must be a folder, not the file '{output_dir}'.")
    if args.series is not None:
        raise InputError("--series picks one series of a DICOM folder; it cannot be used with a folder or CSV list.")
    if getattr(args, "frame", None) not in (None, 0):
        raise InputError("--frame picks one volume of a 4D file; it cannot be used with a folder or CSV list.")
    items = plan_batch(Path(args.input), output_dir,
                       findings_dir=Path(args.findings) if args.findings else None,
                       preview_dir=Path(args.preview) if args.preview else None,
                       map_suffix=args.map_suffix)
    rank, world_size, local_rank = distributed_shard()
    mine = shard(items, rank, world_size)
    logger.info("Rank %d of %d scores %d of %d scans from %s", rank, world_size, len(mine), len(items), args.input)

    device = resolve_device(rank_device(args.device, local_rank))
    # Loaded on the CPU, as for one scan: the pipeline moves the model to the device.
    loaded = load_model(args.model, device="cpu")
    scan_args = copy.copy(args)
    scan_args.device = str(device)

    def score(item: BatchItem, image: sitk.Image) -> None:
        predict_scan(item_arguments(scan_args, item), image=image, loaded=loaded)

    status = run_items(mine, score, overwrite=args.overwrite)
    logger.info("Rank %d: %d scans done, %d skipped as complete, %d failed", rank, len(status["done"]),
                len(status["skipped"]), len(status["failed"]))
    for path in status["failed"]:
        logger.error("Failed: %s", path)
    return 1 if status["failed"] else 0
