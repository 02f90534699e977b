"""Time `screener predict` end to end as a user runs it, and record its peak memory.

Usage:
    python benchmarks/bench_predict_cli.py INPUT [--model NAME_OR_FOLDER] [--repeats N]

Runs the installed CLI in a child process (reading, model loading, inference and writing
included) and prints wall time and the child's peak resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def run_once(input_path: str, model: str | None) -> tuple[float, float]:
    """Return (wall seconds, peak resident memory in GiB) of one predict run in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "ScreenerCore", "predict", input_path, "-o", str(Path(folder) / "map.nii.gz"),
                   "--progress", "none"]
        if model:
            command += ["--model", model]
        started = time.perf_counter()
        # Each run gets its own wrapper process, so RUSAGE_CHILDREN of the wrapper is this run's peak alone.
        wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        output = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
    peak_kib = int(output.stdout.strip().splitlines()[-1])  # ru_maxrss is in KiB on Linux
    return seconds, peak_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="CT file or DICOM folder")
    parser.add_argument("--model", default=None, help="model name or package folder (default: bundled)")
    parser.add_argument("--repeats", type=int, default=1, help="number of runs (default 1)")
    args = parser.parse_args()

    print(f"{date.today()}; {platform.machine()}, {os.cpu_count()} logical CPUs; load average "
          f"{os.getloadavg()[0]:.2f} before the first run")
    for repeat in range(args.repeats):
        seconds, peak_gib = run_once(args.input, args.model)
        print(f"run {repeat + 1}: {seconds:.1f} s wall, {peak_gib:.2f} GiB peak resident memory")


if __name__ == "__main__":
    main()
