"""The model package's config.json as dataclasses: preprocessing, nets, condition, density, calibration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelPackageError

FORMAT_VERSION = 1
CONDITION_KINDS = ("none", "sincos", "masked")
DENSITY_KINDS = ("gaussian", "flow")


@dataclass
class PreprocessingConfig:
    """Settings that bring a CT onto the model grid and intensity scale."""

    # Voxel spacing of the model grid in mm, in (x, y, z) order as in ITK.
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    # Piecewise-linear map from HU to network intensity: HU knots and their values.
    # Values outside the knots are clamped to the end values.
    intensity_knots_hu: tuple[float, ...] = (-1000.0, -200.0, 200.0, 1500.0)
    intensity_knots_value: tuple[float, ...] = (-1.0, -0.3, 0.7, 1.0)
    # Voxels above this HU that connect to the largest such region form the body.
    body_threshold_hu: float = -500.0
    # Patch edge in voxels of the model grid, in (z, y, x) array order; multiples of 4.
    patch_size: tuple[int, int, int] = (96, 96, 96)
    # Fraction of the patch that neighbouring patches share along each axis, in [0, 1).
    overlap: float = 0.25
    # Gaussian sigma in mm applied to the score map on the model grid; 0 turns smoothing off.
    score_smoothing_mm: float = 0.0


@dataclass
class NetConfig:
    """A fully convolutional 3D U-Net giving `out_channels` features per voxel."""

    arch: str = "unet3d"
    in_channels: int = 1
    out_channels: int = 32
    channels: tuple[int, ...] = (16, 32, 64)


@dataclass
class ConditionConfig:
    """Source of the density's condition: none, sin-cos position, or a masked-context net."""

    kind: str = "masked"
    net: NetConfig | None = None
    # Number of sin-cos frequencies per axis for kind "sincos"; the feature size is 6 * frequencies.
    frequencies: int = 8
    # Maximum wavelength of the sin-cos encoding in mm.
    max_wavelength_mm: float = 1000.0

    @property
    def channels(self) -> int:
        if self.kind == "none":
            return 0
        if self.kind == "sincos":
            return 6 * self.frequencies
        return self.net.out_channels


@dataclass
class DensityConfig:
    """The density model q(descriptor | condition)."""

    kind: str = "gaussian"
    hidden_channels: int = 32
    # Flow only: number of Glow steps.
    flow_steps: int = 4


@dataclass
class CalibrationConfig:
    """Quantiles of anomaly scores of in-body training voxels, for percentile thresholds."""

    levels: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


@dataclass
class ModelConfig:
    """The whole config.json of a model package."""

    name: str = "unnamed"
    format_version: int = FORMAT_VERSION
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    descriptor: NetConfig = field(default_factory=NetConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build a config from parsed JSON, raising ModelPackageError on unknown formats or kinds."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelPackageError(f"Model config has format_version {version!r}; this Screener reads "
                                    f"version {FORMAT_VERSION}. Update Screener or re-export the model.")
        try:
            condition = dict(data.get("condition", {}))
            if condition.get("net") is not None:
                condition["net"] = _build(NetConfig, condition["net"])
            config = cls(
                name=data.get("name", "unnamed"),
                format_version=version,
                preprocessing=_build(PreprocessingConfig, data.get("preprocessing", {})),
                descriptor=_build(NetConfig, data.get("descriptor", {})),
                condition=ConditionConfig(**condition),
                density=_build(DensityConfig, data.get("density", {})),
                calibration=_build(CalibrationConfig, data.get("calibration", {})),
                provenance=dict(data.get("provenance", {})),
            )
        except TypeError as error:
            raise ModelPackageError(f"Model config has an unknown or missing field: {error}") from error

        if config.condition.kind not in CONDITION_KINDS:
            raise ModelPackageError(f"Unknown condition kind '{config.condition.kind}'; expected one of {CONDITION_KINDS}.")
        if config.condition.kind == "masked" and config.condition.net is None:
            raise ModelPackageError("Condition kind 'masked' needs a 'net' entry in config.json.")
        if config.density.kind not in DENSITY_KINDS:
            raise ModelPackageError(f"Unknown density kind '{config.density.kind}'; expected one of {DENSITY_KINDS}.")
        return config


def _build(cls, values: dict[str, Any]):
    """Instantiate dataclass `cls` from JSON values, turning lists back into tuples where the field is a tuple."""
    converted = {}
    for item in dataclasses.fields(cls):
        if item.name in values:
            value = values[item.name]
            if isinstance(value, list) and "tuple" in str(item.type):
                value = tuple(value)
            converted[item.name] = value
    unknown = set(values) - {item.name for item in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**converted)
