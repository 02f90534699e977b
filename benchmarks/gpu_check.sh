#!/usr/bin/env bash
# Check the fast inference path on a CUDA GPU: the GPU tests, then the speed benchmark with
# the MONAI reference. Everything goes to one results file; the whole script stays under
# 8 minutes: the steps' time limits below add up to 470 s.
#
# Run from the repository root on a machine with a CUDA build of PyTorch:
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]
# RESULTS_DIR defaults to $OUT when set, else ./gpu_check_results. The machine needs no
# network: SimpleITK and MONAI, which a CUDA PyTorch image usually lacks, are installed
# from the wheels in $WHEELS (default .whl). Make them beforehand, where pip can reach
# the package index, for the GPU machine's Python (3.12 here):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl SimpleITK==2.5.7 monai==1.6.1
# The two wheels take about 54 MB.
#
# The shared CT collection does not travel with the repository. So the volumes are the
# shipped example CT (256 x 256 x 61) and a 512 x 512 x 300 volume resampled from it at
# 0.7 x 0.7 x 1.0 mm, the size of a typical chest CT.

set -uo pipefail

results_dir=${1:-${OUT:-gpu_check_results}}
wheels=${WHEELS:-.whl}
site=/tmp/screener-gpu-site
mkdir -p "$results_dir"
results="$results_dir/gpu_check.txt"
export PYTHONUNBUFFERED=1

step() {
    echo
    echo "== $1 ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
}

{
    step "install wheels from $wheels"
    if compgen -G "$wheels/*.whl" > /dev/null; then
        timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$wheels"/*.whl && export PYTHONPATH="$site:$PWD"
    else
        echo "no wheels in $wheels; using the packages already installed"
        export PYTHONPATH="$PWD"
    fi

    step "machine"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
    timeout 20 python3 -c "import torch, SimpleITK, monai; print('torch', torch.__version__, 'CUDA', \
torch.version.cuda, torch.cuda.get_device_name(0)); print('SimpleITK', SimpleITK.Version_VersionString(), \
'monai', monai.__version__)"
    nproc

    step "GPU tests"
    timeout 110 python3 -m pytest -q -p no:cacheprovider Testing/core/test_speed_paths_cuda.py \
        Testing/core/test_sliding_window.py

    step "512 x 512 x 300 volume"
    volume=/tmp/screener_chest_512x512x300.nii.gz
    timeout 30 python3 - "$volume" <<'PYTHON'
import sys

import SimpleITK as sitk

from ScreenerCore.io import read_ct

example = read_ct("examples/lung2_example.nii.gz")
reference = sitk.Image([512, 512, 300], sitk.sitkFloat32)
reference.SetSpacing([0.7, 0.7, 1.0])
reference.SetDirection(example.GetDirection())
# Centre the new grid on the example's centre, so the body stays in the field of view.
centre = example.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in example.GetSize()])
half = [0.7 * 511 / 2, 0.7 * 511 / 2, 1.0 * 299 / 2]
direction = example.GetDirection()
origin = [centre[i] - sum(direction[3 * i + j] * half[j] for j in range(3)) for i in range(3)]
reference.SetOrigin(origin)
resampled = sitk.Resample(example, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
sitk.WriteImage(resampled, sys.argv[1], useCompression=True)
print("wrote", sys.argv[1], resampled.GetSize(), resampled.GetSpacing())
PYTHON

    step "benchmark on CUDA, bundled model, MONAI reference"
    timeout 170 python3 benchmarks/bench_inference.py --device cuda --warmup \
        --volumes examples/lung2_example.nii.gz "$volume" --json "$results_dir/bench_cuda.json"

    step "benchmark on CUDA with torch.compile"
    timeout 80 python3 benchmarks/bench_inference.py --device cuda --warmup --compile --blends constant \
        --reference-volumes none --volumes "$volume" --json "$results_dir/bench_cuda_compile.json"

    step "done"
} 2>&1 | tee "$results"
