#!/usr/bin/env bash
# Issue 5's GPU check in one table: jcc's train step against the PyTorch
# reference on one GPU, float32 at the two CPU settings and bfloat16 at
# ImageNet-10's (ResNet-34, 224×224, batch 256), with XLA's FLOP count and
# model FLOP utilisation. Under 5 minutes on one H200.
#
#   bash benchmarks/gpu.sh [PEAK_BF16_TFLOPS]   # default 989 (H200, dense)
#
# Needs jax with CUDA, torch with CUDA, and jcc's Python dependencies (the
# accelerator images of this project lack ml-collections and dm-pix; carry
# their wheels). Record the output in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
peak=${1:-989}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
unset JAX_PLATFORMS
python3 -c 'import jax; print(jax.__version__, jax.devices())'
python3 -m benchmarks.train_step --torch-device=cuda --rounds=3 \
    --min-seconds=2 --compute-dtype=float32 \
    --settings=resnet18_cifar-32x32x3-b64,convnet-28x28x1-b256
python3 -m benchmarks.train_step --torch-device=cuda --rounds=3 \
    --min-seconds=3 --compute-dtype=bfloat16 --peak-tflops="$peak" \
    --settings=resnet34-224x224x3-b256
