"""Volume packs: many preprocessed training volumes in one compressed .npz file.

A pack carries a training collection to a machine that has neither the CT files nor
time to preprocess them, such as a GPU machine lent for minutes. Intensities are stored
as float16: in [-1, 1] its step is at most 2 ** -11, about 0.2 HU between -200 and 200 HU
with the default HU knots. Body masks are stored as booleans, and the file is
zip-compressed (the seven 2 mm training CTs of the test collection take 41 MiB). The pack
records the preprocessing it was made with, and reading it for another model grid raises.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ScreenerCore.config import PreprocessingConfig
from ScreenerCore.errors import InputError

logger = logging.getLogger(__name__)

PACK_SUFFIX = ".npz"
FORMAT = "screener-volume-pack-1"
# Settings that change the arrays. Patch size, overlap and score smoothing act at inference only.
GRID_SETTINGS = ("spacing_mm", "intensity_knots_hu", "intensity_knots_value", "body_threshold_hu")


def grid_settings(config: PreprocessingConfig) -> dict:
    settings = asdict(config)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()
            if key in GRID_SETTINGS}


def is_volume_pack(path: Path) -> bool:
    """Return whether `path` is a volume pack (an .npz file whose header names this format)."""
    if not (path.is_file() and path.suffix.lower() == PACK_SUFFIX):
        return False
    try:
        with np.load(path) as data:
            return "format" in data.files and str(data["format"]) == FORMAT
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def write_volume_pack(volumes, config: PreprocessingConfig, path: str | os.PathLike) -> Path:
    """Write `volumes` (TrainingVolume objects on `config`'s grid) to one compressed pack file."""
    path = Path(path)
    check_pack_suffix(path)
    arrays = {"format": np.array(FORMAT), "names": np.array([volume.name for volume in volumes]),
              "preprocessing": np.array(json.dumps(grid_settings(config), sort_keys=True))}
    for index, volume in enumerate(volumes):
        arrays[f"intensity_{index}"] = volume.intensity.astype(np.float16)
        arrays[f"body_mask_{index}"] = volume.body_mask.astype(bool)
        arrays[f"origin_mm_{index}"] = np.asarray(volume.origin_mm, dtype=np.float64)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so a stopped run never leaves a truncated pack.
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp{PACK_SUFFIX}")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(path)
    logger.info("Wrote %d volumes to %s (%.1f MiB)", len(volumes), path, path.stat().st_size / 2 ** 20)
    return path


def check_pack_suffix(path: Path) -> None:
    if path.suffix.lower() != PACK_SUFFIX:
        raise InputError(f"Pack file '{path}' must end in {PACK_SUFFIX}.")


def pack_volume_names(path: Path) -> list[str]:
    with np.load(path) as data:
        return [str(name) for name in data["names"]]


def read_pack_volumes(path: Path, config: PreprocessingConfig, indices: list[int]):
    """Return the TrainingVolume objects at `indices` of the pack, checking that its grid matches `config`."""
    from .data import TrainingVolume  # noqa: PLC0415 - data imports this module

    with np.load(path) as data:
        stored = json.loads(str(data["preprocessing"]))
        expected = grid_settings(config)
        if stored != expected:
            differing = sorted(key for key in expected if stored.get(key) != expected[key])
            details = "; ".join(f"{key} is {stored.get(key)} in the pack but {expected[key]} here" for key in differing)
            raise InputError(f"Volume pack '{path}' was made with other preprocessing ({details}). Train with the "
                             "pack's settings (for example --spacing), or make a new pack with 'screener-train pack' "
                             "and this model's settings.")
        names = [str(name) for name in data["names"]]
        return [TrainingVolume(names[index], data[f"intensity_{index}"].astype(np.float32),
                               data[f"body_mask_{index}"], tuple(data[f"origin_mm_{index}"].tolist()),
                               tuple(config.spacing_mm))
                for index in indices]
