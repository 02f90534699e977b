"""`screener evaluate`: voxel AUROC, AUROC and AUPRO up to an FPR over (CT, pathology mask) pairs.

Metrics are computed per volume and pooled per dataset, on the input CT's own grid
and over all its voxels (voxels outside the body keep the map's floor score).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io import IMAGE_SUFFIXES, has_suffix, read_ct
from ..metrics import DetectionMetrics, VolumeScores, collect_volume_scores, detection_metrics

logger = logging.getLogger(__name__)

# File name parts that mark the CT and its mask in a folder: lung1_image.nrrd pairs with lung1_label.nrrd.
IMAGE_MARKER = "_image"
MASK_MARKERS = ("_label", "_mask", "_seg")
BASELINE_HU = 40.0


@dataclass
class EvaluationPair:
    dataset: str
    case: str
    image: Path
    mask: Path


def _strip_suffix(name: str) -> str:
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def list_pairs_in_folder(folder: Path) -> list[EvaluationPair]:
    """Pair every CASE_image.* file in `folder` with its CASE_label.*, CASE_mask.* or CASE_seg.* file."""
    files = {_strip_suffix(p.name): p for p in sorted(folder.iterdir()) if p.is_file() and has_suffix(p, IMAGE_SUFFIXES)}
    pairs = []
    for stem, image in files.items():
        if not stem.endswith(IMAGE_MARKER):
            continue
        case = stem[:-len(IMAGE_MARKER)]
        masks = [files[case + marker] for marker in MASK_MARKERS if case + marker in files]
        if not masks:
            raise InputError(f"'{image}' has no mask beside it; expected {case}_label, {case}_mask or {case}_seg "
                             f"with an image suffix in {folder}.")
        pairs.append(EvaluationPair(folder.name, case, image, masks[0]))
    if not pairs:
        raise InputError(f"No CASE{IMAGE_MARKER}.* files found in '{folder}'; name CTs CASE{IMAGE_MARKER}.nrrd "
                         f"and masks CASE_label.nrrd, or pass a CSV with 'image' and 'mask' columns.")
    return pairs


def list_pairs_in_csv(path: Path) -> list[EvaluationPair]:
    """Read pairs from a CSV with columns image, mask and optionally dataset and case; relative paths start at the CSV."""
    pairs = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(f"'{path}' lacks the column(s) {sorted(missing)}; it needs 'image' and 'mask' "
                             "(and optionally 'dataset' and 'case').")
        for row in reader:
            image, mask = (Path(row[key]) if Path(row[key]).is_absolute() else path.parent / row[key]
                           for key in ("image", "mask"))
            case = row.get("case") or _strip_suffix(image.name)
            pairs.append(EvaluationPair(row.get("dataset") or path.stem, case, image, mask))
    return pairs


def list_pairs(sources: list[str]) -> list[EvaluationPair]:
    pairs = []
    for source in map(Path, sources):
        if source.is_dir():
            pairs += list_pairs_in_folder(source)
        elif source.is_file() and source.suffix.lower() == ".csv":
            pairs += list_pairs_in_csv(source)
        else:
            raise InputError(f"Evaluation source '{source}' not found; pass folders of CASE_image/CASE_label "
                             "files or CSV lists with 'image' and 'mask' columns.")
    return pairs


def read_mask(path: Path, image: sitk.Image) -> np.ndarray:
    """Read a pathology mask (non-zero = pathology) and check that it lies on `image`'s grid."""
    if not path.is_file():
        raise InputError(f"Mask '{path}' not found.")
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"Cannot read mask '{path}' as an image. Give a NIfTI, NRRD or MHA label map on the "
                         "CT's grid.") from error
    same_grid = (mask.GetSize() == image.GetSize()
                 and np.allclose(mask.GetSpacing(), image.GetSpacing(), rtol=1e-4)
                 and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
                 and np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-4))
    if not same_grid:
        raise InputError(f"Mask '{path}' (size {mask.GetSize()}, spacing {mask.GetSpacing()}) is not on the CT's "
                         f"grid (size {image.GetSize()}, spacing {image.GetSpacing()}); resample it onto the CT "
                         "with nearest-neighbour interpolation first.")
    return sitk.GetArrayViewFromImage(mask) > 0


class ModelScorer:
    """Scores a CT with a model package through the same pipeline as `screener predict`."""

    def __init__(self, model: str | None, device: str, batch_size: int):
        from ..device import resolve_device  # noqa: PLC0415 - torch loads only when a model is used
        from ..registry import load_model  # noqa: PLC0415

        self.device = resolve_device(device)
        self.loaded = load_model(model, device=self.device)
        self.batch_size = batch_size

    def __call__(self, image: sitk.Image, name: str) -> np.ndarray:
        from ..pipeline import compute_anomaly_map  # noqa: PLC0415

        result = compute_anomaly_map(image, self.loaded, device=str(self.device), batch_size=self.batch_size,
                                     name=name)
        return sitk.GetArrayFromImage(result.anomaly_map)


def intensity_baseline(image: sitk.Image, name: str) -> np.ndarray:
    """Score -|HU - 40|: soft-tissue density ranks highest, so a tumour in lung or fat scores high."""
    return -np.abs(sitk.GetArrayFromImage(image).astype(np.float32) - BASELINE_HU)


@dataclass
class EvaluationRow:
    dataset: str
    case: str
    metrics: DetectionMetrics
    seconds: float


def evaluate_pairs(pairs: list[EvaluationPair], scorer, max_fpr: float) -> list[EvaluationRow]:
    """Score every pair; return one row per volume, then one pooled row per dataset (case 'pooled')."""
    rows = []
    by_dataset: dict[str, list[VolumeScores]] = {}
    for pair in pairs:
        image = read_ct(pair.image)
        labels = read_mask(pair.mask, image)
        started = time.perf_counter()
        scores = scorer(image, str(pair.image))
        seconds = time.perf_counter() - started
        volume = collect_volume_scores(scores, labels)
        del scores
        rows.append(EvaluationRow(pair.dataset, pair.case, detection_metrics([volume], max_fpr), seconds))
        by_dataset.setdefault(pair.dataset, []).append(volume)
        logger.info("%s/%s: AUROC %.3f, AUROC@%.2f %.3f, AUPRO@%.2f %.3f (%.0f s)", pair.dataset, pair.case,
                    rows[-1].metrics.auroc, max_fpr, rows[-1].metrics.partial_auroc, max_fpr,
                    rows[-1].metrics.aupro, seconds)
    for dataset, volumes in by_dataset.items():
        seconds = sum(row.seconds for row in rows if row.dataset == dataset)
        rows.append(EvaluationRow(dataset, "pooled", detection_metrics(volumes, max_fpr), seconds))
    return rows


def csv_text(rows: list[EvaluationRow], scorer_name: str) -> str:
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(["scorer", "dataset", "case", "voxels", "positives", "regions", "auroc", "max_fpr",
                     "partial_auroc", "aupro", "seconds"])
    for row in rows:
        metrics = row.metrics
        writer.writerow([scorer_name, row.dataset, row.case, metrics.voxels, metrics.positives, metrics.regions,
                         f"{metrics.auroc:.4f}", metrics.max_fpr, f"{metrics.partial_auroc:.4f}",
                         f"{metrics.aupro:.4f}", f"{row.seconds:.1f}"])
    return output.getvalue()


def markdown_text(rows: list[EvaluationRow], scorer_name: str) -> str:
    scorer_name = scorer_name.replace("|", "\\|")  # a bare pipe would split the table cell
    max_fpr = rows[0].metrics.max_fpr if rows else 0.3
    lines = [f"| scorer | dataset | case | AUROC | AUROC@FPR{max_fpr:g} | AUPRO@FPR{max_fpr:g} | regions | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        metrics = row.metrics
        lines.append(f"| {scorer_name} | {row.dataset} | {row.case} | {metrics.auroc:.3f} | "
                     f"{metrics.partial_auroc:.3f} | {metrics.aupro:.3f} | {metrics.regions} | {row.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def run_evaluate(args: argparse.Namespace) -> int:
    if not 0.0 < args.max_fpr <= 1.0:
        raise InputError(f"--max-fpr must be in (0, 1], got {args.max_fpr}.")
    pairs = list_pairs(args.sources)
    if args.baseline == "intensity":
        scorer, scorer_name = intensity_baseline, args.name or f"-|HU - {BASELINE_HU:g}|"
    else:
        scorer = ModelScorer(args.model, args.device, args.batch_size)
        scorer_name = args.name or scorer.loaded.config.name

    rows = evaluate_pairs(pairs, scorer, args.max_fpr)
    markdown = markdown_text(rows, scorer_name)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        Path(args.csv).write_text(csv_text(rows, scorer_name), encoding="utf-8")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown, encoding="utf-8")
    sys.stdout.write(markdown)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="measure AUROC and AUPRO of a model on CTs with pathology masks",
        description="Compute voxel AUROC, AUROC up to an FPR and AUPRO up to an FPR of a model (or the "
                    "-|HU - 40| intensity baseline) over CTs with pathology masks, per volume and pooled "
                    "per dataset. Prints a markdown table.")
    parser.add_argument("sources", nargs="+",
                        help="folders of CASE_image.* and CASE_label.* files (the folder name is the dataset), "
                             "or CSV files with columns image, mask and optionally dataset and case")
    parser.add_argument("--model", default=None, help="model name or package folder (default: the bundled model)")
    parser.add_argument("--baseline", choices=["intensity"], default=None,
                        help="score with -|HU - 40| instead of a model")
    parser.add_argument("--name", default=None, help="scorer name in the tables (default: the model's name)")
    parser.add_argument("--max-fpr", type=float, default=0.3,
                        help="FPR up to which the partial AUROC and AUPRO are integrated (default 0.3)")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    parser.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=2, help="patches per network call (default 2)")
    parser.set_defaults(handler=run_evaluate)
