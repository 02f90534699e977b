"""The extension's build files and catalog entry: what the Extensions Index checks, and CMake itself.

Slicer's SDK is not installed here, so the CMake test configures the extension against a stub
Slicer package that defines the Slicer macros the build uses, checks their arguments and
records them. Building and packaging for real happens on Slicer's extension build machines.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
from module_testing import MODULE_FOLDER, REPO_ROOT

CATALOG_ENTRY = REPO_ROOT / "Screener.json"
TOP_CMAKE = REPO_ROOT / "CMakeLists.txt"
MODULE_CMAKE = MODULE_FOLDER / "CMakeLists.txt"
REQUIREMENTS = MODULE_FOLDER / "Resources" / "requirements.txt"
# Categories of the Extensions Index that fit Screener, from ACCEPTED_EXTENSION_CATEGORIES in
# Slicer/ExtensionsIndex scripts/check_description_files.py (main branch, August 2026).
FITTING_CATEGORIES = {"Analysis", "Quantification", "Segmentation"}
# Core dependencies that Slicer ships (numpy, SimpleITK) or the PyTorch extension installs (torch).
NOT_FROM_REQUIREMENTS = {"torch", "numpy", "simpleitk"}


def cmake_set_values(text: str) -> dict[str, str]:
    """Return the value of every set(NAME "value") in a CMake file."""
    return dict(re.findall(r'set\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', text))


def project_name(text: str) -> str:
    return re.search(r"project\s*\(\s*([^\s)]+)", text).group(1)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


def test_catalog_entry_matches_project():
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    assert CATALOG_ENTRY.stem == project_name(TOP_CMAKE.read_text(encoding="utf-8")) == "Screener"
    assert not CATALOG_ENTRY.stem.lower().startswith("slicer")
    for key in ("$schema", "category", "scm_url"):
        assert entry.get(key), key
    assert entry["category"] in FITTING_CATEGORIES
    assert entry["scm_url"].startswith("https://")
    repository = entry["scm_url"].rstrip("/").rsplit("/", 1)[-1]
    assert repository.startswith("Slicer"), "Extensions Index repositories are named Slicer*"
    assert b"\r" not in CATALOG_ENTRY.read_bytes(), "the index requires LF line endings"


def test_catalog_dependencies_match_cmake():
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    values = cmake_set_values(TOP_CMAKE.read_text(encoding="utf-8"))
    assert entry["build_dependencies"] == values["EXTENSION_DEPENDS"].split()
    assert "PyTorch" in entry["build_dependencies"]
    assert values["EXTENSION_CATEGORY"] == entry["category"]


def test_extension_metadata_complete():
    values = cmake_set_values(TOP_CMAKE.read_text(encoding="utf-8"))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert values.get(key), key
    for url in [values["EXTENSION_ICONURL"], *values["EXTENSION_SCREENSHOTURLS"].split()]:
        assert url.startswith("https://"), url
        # Raw URLs point into this repository's main branch; the file must exist here.
        relative = url.split("/main/", 1)[1]
        assert (REPO_ROOT / relative).is_file(), f"{url} points to a file missing from the repository"
    assert (REPO_ROOT / "LICENSE").is_file()


def listed_module_files(kind: str) -> list[str]:
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    block = re.search(rf"set\(MODULE_PYTHON_{kind}\s+(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "ScreenerModule") for line in block.splitlines() if line.strip()]


def test_module_cmake_lists_every_script():
    listed = set(listed_module_files("SCRIPTS"))
    on_disk = {"ScreenerModule.py"} | {f"ScreenerModuleLib/{path.name}"
                                        for path in (MODULE_FOLDER / "ScreenerModuleLib").glob("*.py")}
    assert listed == on_disk


def test_module_cmake_resources_exist():
    resources = listed_module_files("RESOURCES")
    assert "Resources/UI/ScreenerModule.ui" in resources
    for resource in resources:
        assert (MODULE_FOLDER / resource).is_file(), resource


def test_requirements_cover_core_dependencies():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    core = {requirement_name(requirement) for requirement in pyproject["project"]["dependencies"]}
    from ScreenerModuleLib.dependencies import read_requirements

    listed = {requirement_name(requirement) for requirement in read_requirements(REQUIREMENTS)}
    assert listed == core - NOT_FROM_REQUIREMENTS


STUB_SLICER_CONFIG = r"""
# A stand-in for Slicer's SlicerConfig.cmake: the variables and macros the extension uses.
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(BUILD_TESTING ON)
set(RECORD ${CMAKE_BINARY_DIR}/slicer_macro_calls.txt)
file(WRITE ${RECORD} "")

function(require_files base)
  foreach(file ${ARGN})
    if(NOT EXISTS ${base}/${file})
      message(FATAL_ERROR "listed file does not exist: ${base}/${file}")
    endif()
  endforeach()
endfunction()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MODULE "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MODULE_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${MODULE_UNPARSED_ARGUMENTS}")
  endif()
  require_files(${CMAKE_CURRENT_SOURCE_DIR} ${MODULE_SCRIPTS} ${MODULE_RESOURCES})
  file(APPEND ${RECORD} "module ${MODULE_NAME} scripts=${MODULE_SCRIPTS} resources=${MODULE_RESOURCES}\n")
endmacro()

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(PYTHON "NO_INSTALL_SUBDIR" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
                        "SCRIPTS;RESOURCES" ${ARGN})
  if(PYTHON_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${PYTHON_UNPARSED_ARGUMENTS}")
  endif()
  require_files(${PYTHON_SOURCE_DIR} ${PYTHON_SCRIPTS} ${PYTHON_RESOURCES})
  file(APPEND ${RECORD} "python ${PYTHON_TARGET_NAME} destination=${PYTHON_DESTINATION_DIR} scripts=${PYTHON_SCRIPTS} resources=${PYTHON_RESOURCES}\n")
endmacro()

function(slicer_add_python_unittest)
  cmake_parse_arguments(TEST "" "SCRIPT" "" ${ARGN})
  file(APPEND ${RECORD} "unittest ${TEST_SCRIPT}\n")
endfunction()
"""


@pytest.fixture
def configured_record(tmp_path) -> str:
    """Configure the extension with the stub Slicer package; return the recorded macro calls."""
    cmake = shutil.which("cmake")
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cmake is None or compiler is None:
        pytest.skip("configuring the extension needs cmake and a C++ compiler on PATH")
    stub = tmp_path / "stub_slicer"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG, encoding="utf-8")
    (stub / "empty.cmake").write_text("", encoding="utf-8")
    build = tmp_path / "build"
    completed = subprocess.run([cmake, "-S", str(REPO_ROOT), "-B", str(build), f"-DSlicer_DIR={stub}"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return (build / "slicer_macro_calls.txt").read_text(encoding="utf-8")


def test_cmake_configures_module_core_and_test(configured_record):
    lines = configured_record.splitlines()
    module = next(line for line in lines if line.startswith("module ScreenerModule "))
    assert "ScreenerModuleLib/logic.py" in module
    core = next(line for line in lines if line.startswith("python ScreenerCore "))
    # The core lands in the same folder as the module's scripts, so `import ScreenerCore` works.
    destination = core.split("destination=")[1].split()[0]
    assert destination.endswith("lib/Slicer/qt-scripted-modules")
    core_files = core.split("scripts=")[1].split()[0].split(";")
    expected = {str(path.relative_to(REPO_ROOT)).replace("\\", "/")
                for path in (REPO_ROOT / "ScreenerCore").rglob("*.py")}
    assert set(core_files) == expected
    assert "ScreenerCore/cli/predict.py" in core_files
    assert "unittest ScreenerModule.py" in lines
