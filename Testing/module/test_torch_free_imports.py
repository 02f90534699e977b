"""The 3D Slicer module's logic and ScreenerCore's light modules import without loading torch.

Inference runs in a separate process, so Slicer's own process should not pay torch's
start-up time and memory just to list models, read findings or move the threshold.
Each import runs in a fresh interpreter, because this test process has torch loaded already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "ScreenerExtension" / "ScreenerModule"

LIGHT_MODULES = [
    "ScreenerCore",
    "ScreenerCore.registry",
    "ScreenerCore.hub",
    "ScreenerCore.findings",
    "ScreenerCore.calibration",
    "ScreenerModuleLib.logic",
    "ScreenerModuleLib.models",
    "ScreenerModuleLib.thresholds",
    "ScreenerModuleLib.findings_table",
]


def modules_loaded_by(module: str) -> set[str]:
    """Return the names in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, env={"PYTHONPATH": f"{REPO_ROOT}:{MODULE_DIR}", "PATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_import_does_not_load_torch(module):
    assert "torch" not in modules_loaded_by(module)


def test_lazy_name_loads_torch_on_use():
    """Guard that the check can fail: the pipeline entry point does need torch."""
    code = "import sys, ScreenerCore; ScreenerCore.compute_anomaly_map; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""})

    assert result.stdout.strip() == "True", result.stderr[-2000:]


def test_unknown_name_raises_attribute_error():
    import ScreenerCore  # noqa: PLC0415

    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        ScreenerCore.not_a_name  # noqa: B018
