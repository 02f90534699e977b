"""Training volumes: listing CT files, preprocessing them once onto the model grid, caching the result."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ScreenerCore.config import PreprocessingConfig
from ScreenerCore.errors import InputError
from ScreenerCore.io import IMAGE_SUFFIXES, has_suffix, list_dicom_series, read_ct
from ScreenerCore.preprocessing import to_model_grid

from .distributed import shard
from .packs import PACK_SUFFIX, is_volume_pack, pack_volume_names, read_pack_volumes

logger = logging.getLogger(__name__)


@dataclass
class TrainingVolume:
    """One CT on the model grid: intensity (float32) and body mask, (z, y, x) arrays."""

    name: str
    intensity: np.ndarray
    body_mask: np.ndarray
    # Physical (x, y, z) position in mm of voxel (0, 0, 0), for sin-cos conditions.
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]


def list_ct_sources(sources: list[str | Path]) -> list[Path]:
    """Expand folders (image files and DICOM folders below them) and CSV lists (column `path`) into inputs."""
    found = []
    for source in map(Path, sources):
        if source.is_file() and source.suffix.lower() == ".csv":
            with open(source, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    path = Path(row["path"])
                    found.append(path if path.is_absolute() else source.parent / path)
        elif source.is_dir():
            for path in sorted(source.rglob("*")):
                if path.is_file() and (has_suffix(path, IMAGE_SUFFIXES) or is_volume_pack(path)):
                    found.append(path)
                elif path.is_dir() and list_dicom_series(path):
                    found.append(path)
            if list_dicom_series(source):
                found.append(source)
        elif source.is_file():
            found.append(source)
        else:
            raise InputError(f"Training source '{source}' not found; pass folders, CT files or a CSV with a 'path' column.")
    return found


def cache_key(path: Path, config: PreprocessingConfig) -> str:
    stat = path.stat()
    settings = asdict(config)
    # Score smoothing acts after inference, so it must not invalidate cached preprocessing.
    settings.pop("score_smoothing_mm", None)
    text = json.dumps([str(path.resolve()), stat.st_mtime_ns, stat.st_size, settings], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_training_volume(path: Path, config: PreprocessingConfig, cache_dir: Path | None) -> TrainingVolume:
    """Read and preprocess one CT, reusing the cached arrays from an earlier run when present."""
    cached = None if cache_dir is None else cache_dir / f"{cache_key(path, config)}.npz"
    if cached is not None and cached.is_file():
        with np.load(cached) as data:
            return TrainingVolume(path.name, data["intensity"], data["body_mask"],
                                  tuple(data["origin_mm"].tolist()), tuple(config.spacing_mm))

    grid = to_model_grid(read_ct(path), config, name=str(path))
    volume = TrainingVolume(path.name, grid.intensity, grid.body_mask, tuple(grid.reference.GetOrigin()),
                            tuple(config.spacing_mm))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # A per-process temporary name, so parallel stages filling one cache cannot collide.
        temporary = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
        np.savez(temporary, intensity=volume.intensity, body_mask=volume.body_mask,
                 origin_mm=np.array(volume.origin_mm))
        temporary.replace(cached)
    return volume


def load_training_volumes(sources: list[str | Path], config: PreprocessingConfig,
                          cache_dir: Path | None = None, rank: int = 0, world_size: int = 1) -> list[TrainingVolume]:
    """Load every readable CT of this rank's shard of `sources`; unreadable ones are skipped with one logged reason each.

    Sources may also name volume packs (see packs.py), whose volumes count as inputs each.
    The inputs are split round-robin over `world_size` ranks (see distributed.shard), so
    each rank of a torchrun job reads only its own files.
    """
    # One entry per volume: (CT path, None), or (pack path, index) for a volume in a pack.
    entries = []
    for path in list_ct_sources(sources):
        if is_volume_pack(path):
            entries += [(path, index) for index in range(len(pack_volume_names(path)))]
        elif path.suffix.lower() == PACK_SUFFIX:
            raise InputError(f"'{path}' is not a readable volume pack: it is corrupt, truncated or another .npz "
                             "file. Make it again with 'screener-train pack'.")
        else:
            entries.append((path, None))

    volumes, skipped = [], 0
    pack_indices: dict[Path, list[int]] = {}
    for path, index in shard(entries, rank, world_size):
        if index is not None:
            pack_indices.setdefault(path, []).append(index)
            continue
        try:
            volumes.append(load_training_volume(path, config, cache_dir))
        except (InputError, RuntimeError, OSError, ValueError) as error:
            skipped += 1
            logger.warning("Skipping training input %s: %s", path, error)
    # A pack made for another grid raises instead of being skipped: every volume in it would be wrong.
    for path, indices in pack_indices.items():
        volumes += read_pack_volumes(path, config, indices)
    logger.info("Rank %d loaded %d training volumes, skipped %d unreadable", rank, len(volumes), skipped)
    if not volumes:
        raise InputError(f"No readable CT found for rank {rank} of {world_size} in {', '.join(map(str, sources))}.")
    return volumes
