#!/usr/bin/env bash
# The CUDA check of issues 7 and 8, for a machine with a GPU; run from the repository root:
#
#     bash benchmarks/cuda_check.sh [OUT_DIR]      # OUT_DIR defaults to benchmarks/
#
# 1. tests/test_devices.py: every method and metric on CUDA against the CPU, differentiable
#    maps, explain_dataset, and the camkit command under torchrun (NCCL);
# 2. the benchmark on CUDA (time and peak CUDA memory as ratios to a no-grad
#    forward, peers where installed; the classifiers and Faster R-CNN), ending with
#    each method's CUDA-vs-CPU maps.
# Peers come from wheels on PYTHONPATH: PYTHONPATH=$(ls -d $PWD/.whl/*.whl | tr '\n' :).
# It needs torch, torchvision, numpy, matplotlib, tqdm, pytest and hypothesis; camkit
# is imported from the checkout, so nothing is installed.
set -euo pipefail
out=${1:-benchmarks}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"
status=0  # a failing test does not stop the benchmark: one run on the GPU gives both
python3 -m pytest -q -p no:cacheprovider tests/test_devices.py 2>&1 | tee "$out/cuda-tests.log" \
    || status=1
python3 benchmarks/run.py --device cuda --repeats 10 --cases mnist resnet50 vit_b_16 fasterrcnn \
    --out "$out/results-cuda.md" || status=1
exit "$status"
