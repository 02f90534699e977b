#!/usr/bin/env bash
# Create .venv in the repository root and install Screener with its test and benchmark extras
# (the speed tests compare against MONAI's sliding-window inferer).
# torch is installed first at 2.13.0, the CPU build; a plain "torch" requirement would pull a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test,bench]"
echo "Screener installed in $(pwd)/.venv" >&2
