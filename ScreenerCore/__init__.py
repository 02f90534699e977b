"""ScreenerCore: self-supervised anomaly maps for 3D CT, independent of 3D Slicer and Qt.

The names below are imported on first access, so that a caller that only needs the
registry, findings or calibration (such as the 3D Slicer module, which runs inference in
a separate process) does not load torch.
"""

from __future__ import annotations

import importlib

from .errors import InputError, ModelPackageError, OperationCancelled, ScreenerError

__version__ = "0.1.0"

# Public name -> submodule that defines it.
_LAZY_NAMES = {
    "read_ct": "io",
    "write_image": "io",
    "LoadedModel": "package",
    "load_model_package": "package",
    "save_model_package": "package",
    "AnomalyMapResult": "pipeline",
    "compute_anomaly_map": "pipeline",
}

__all__ = ["AnomalyMapResult", "InputError", "LoadedModel", "ModelPackageError", "OperationCancelled",
           "ScreenerError", "compute_anomaly_map", "load_model_package", "read_ct", "save_model_package",
           "write_image"]


def __getattr__(name: str):
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module 'ScreenerCore' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value
