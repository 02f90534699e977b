"""ScreenerCore: self-supervised anomaly maps for 3D CT, independent of 3D Slicer and Qt."""

from .errors import InputError, ModelPackageError, OperationCancelled, ScreenerError
from .io import read_ct, write_image
from .package import LoadedModel, load_model_package, save_model_package
from .pipeline import AnomalyMapResult, compute_anomaly_map

__version__ = "0.1.0"

__all__ = ["AnomalyMapResult", "InputError", "LoadedModel", "ModelPackageError", "OperationCancelled",
           "ScreenerError", "compute_anomaly_map", "load_model_package", "read_ct", "save_model_package",
           "write_image"]
