"""Installing Screener's Python packages inside Slicer, after the user agrees. Runs in Slicer only.

Call it on the main thread: it shows dialogs, and Slicer's pip_install keeps the GUI painted
while pip runs. torch comes from the PyTorch extension (PyTorchUtils), which chooses the CUDA
or CPU build that fits the computer; everything else comes from Resources/requirements.txt.
"""

from __future__ import annotations

import logging

from . import dependencies

logger = logging.getLogger(__name__)


class InstallDeclined(RuntimeError):
    """The user did not agree to install the missing packages."""


def ensure_dependencies(requirements_path=dependencies.REQUIREMENTS_FILE) -> bool:
    """Install what is missing after asking the user; return True when something was installed.

    Raises InstallDeclined when the user says no, and RuntimeError with the fix when the PyTorch
    extension is missing or torch cannot be installed.
    """
    import slicer

    torch_needed = dependencies.torch_missing()
    missing = dependencies.missing_requirements(requirements_path)
    if not torch_needed and not missing:
        return False

    names = (["torch"] if torch_needed else []) + missing
    if not slicer.util.confirmOkCancelDisplay(
            "Screener needs Python packages that are not installed yet. Installing them needs a network "
            "connection and may take several minutes (torch is about 1-3 GB). Install now?",
            "Install Python packages",
            detailedText="Packages to install:\n" + "\n".join(names)):
        raise InstallDeclined("Installation cancelled; Screener cannot run without these packages: "
                              + ", ".join(names) + ".")

    if torch_needed:
        _install_torch()
    if missing:
        logger.info("Installing %s", ", ".join(missing))
        slicer.util.pip_install(missing)
    return True


def _install_torch() -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError as error:
        raise RuntimeError("Screener needs the PyTorch extension to install torch. Install \"PyTorch\" from "
                           "the Extensions Manager, restart Slicer and try again.") from error

    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if torch_logic.torchInstalled():
        return
    logger.info("Installing torch through the PyTorch extension (%s)", dependencies.TORCH_REQUIREMENT)
    requirement = dependencies.TORCH_REQUIREMENT.removeprefix("torch")
    if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is None:
        raise RuntimeError("Installing torch failed. Open the \"PyTorch Utils\" module to install it by hand, "
                           "then try again.")
