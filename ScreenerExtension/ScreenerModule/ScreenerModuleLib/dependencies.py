"""Python packages that Screener needs in Slicer's Python, and the check for missing ones.

Standard library only (plus `packaging`, which Slicer ships), so the module can report what is
missing before anything is installed. torch is listed apart: it comes from the PyTorch
extension's installer, which picks the build that matches the computer's GPU driver.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
# The same range as the core's pyproject.toml.
TORCH_REQUIREMENT = "torch>=2.2,<3"


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """Return the requirement lines of a requirements file, without comments, blanks and pip options."""
    requirements = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirements.append(line)
    return requirements


def is_satisfied(requirement: str) -> bool:
    """Return True when an installed distribution satisfies `requirement` (name and version range)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        # Without packaging, only the presence of the distribution can be checked.
        name = requirement.split(";")[0]
        for separator in "<>=!~[ ":
            name = name.split(separator)[0]
        return _installed_version(name) is not None

    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate():
        return True
    version = _installed_version(parsed.name)
    if version is None:
        return False
    return parsed.specifier.contains(version, prereleases=True)


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements_path: Path = REQUIREMENTS_FILE) -> list[str]:
    """Return the requirements from `requirements_path` that are not installed, torch excluded."""
    return [requirement for requirement in read_requirements(requirements_path) if not is_satisfied(requirement)]


def torch_missing() -> bool:
    return not is_satisfied(TORCH_REQUIREMENT)


def describe_missing(requirements_path: Path = REQUIREMENTS_FILE) -> str:
    """Return a sentence naming the missing packages, or an empty string when nothing is missing."""
    missing = (["torch (from the PyTorch extension)"] if torch_missing() else [])
    missing += missing_requirements(requirements_path)
    if not missing:
        return ""
    return ("Screener needs these Python packages, which are not installed yet: " + ", ".join(missing)
            + ". Click \"Compute anomaly map\" to install them.")
