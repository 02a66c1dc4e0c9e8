#!/usr/bin/env bash
# The accelerator check in one script, within 7 minutes on one H200:
#   1. two short end-to-end trainings (benchmarks/gpu_train.py): the CIFAR-10
#      test .npz, the CIFAR-stem ResNet-18 at 32×32 in bfloat16, first with
#      the config's optimiser (CC's Adam) for as many epochs as fit in
#      GPU_TRAIN_SECONDS (180), then as many epochs with SimCLR's optimiser
#      (--recipe=simclr, the CPU config's), each printing ACC, images/s, step
#      time and MFU;
#   2. jcc's train step against the PyTorch reference, float32 at the two CPU
#      settings and bfloat16 at ImageNet-10's (ResNet-34, 224×224, batch 256),
#      with XLA's FLOP count and model FLOP utilisation.
#
#   bash benchmarks/gpu.sh [PEAK_BF16_TFLOPS]   # default 989 (H200, dense)
#
# Environment: CIFAR10_NPZ (default ../shared/data/cifar10_test_jpeg.npz),
# GPU_TRAIN_SECONDS, GPU_TRAIN_ARGS (more flags for gpu_train), TORCH_DEVICE
# (cuda), JAX_PLATFORMS (cuda,cpu; platforms set there are kept):
# `JAX_PLATFORMS=cpu TORCH_DEVICE=cpu GPU_TRAIN_SECONDS=30 bash
# benchmarks/gpu.sh` is a dry run of the logic on a CPU. Needs jax for the
# accelerator, torch, and jcc's dependencies (an image without ml-collections
# or dm-pix takes their wheels: benchmarks/gpu_wheels.sh). Record the output
# in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
peak=${1:-989}
data=${CIFAR10_NPZ:-../shared/data/cifar10_test_jpeg.npz}
torch_device=${TORCH_DEVICE:-cuda}
# benchmarks.train_step defaults JAX to the CPU: the accelerator is named
# (first, the default), and the CPU beside it for XLA:CPU's FLOP count.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c 'import jax; print(jax.__version__, jax.devices())'
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# shellcheck disable=SC2086  # GPU_TRAIN_ARGS: several words
if python3 -m benchmarks.gpu_train --data="$data" --peak-tflops="$peak" \
    --budget-seconds="${GPU_TRAIN_SECONDS:-180}" ${GPU_TRAIN_ARGS:-} |
    tee "$log"; then
  # The same number of epochs with SimCLR's optimiser, side by side.
  epochs=$(sed -n 's/^gpu_train: \([0-9]*\) epochs in.*/\1/p' "$log")
  # shellcheck disable=SC2086
  python3 -m benchmarks.gpu_train --data="$data" --peak-tflops="$peak" \
      --epochs="$epochs" --recipe=simclr ${GPU_TRAIN_ARGS:-} ||
      { echo 'gpu.sh: the SimCLR-recipe training failed (above).'; status=1; }
else
  echo 'gpu.sh: the training failed (above).'
  status=1
fi
if python3 -c 'import torch' 2>/dev/null; then
  python3 -m benchmarks.train_step --torch-device="$torch_device" --rounds=3 \
      --min-seconds=2 --compute-dtype=float32 \
      --settings=resnet18_cifar-32x32x3-b64,convnet-28x28x1-b256 ||
      echo 'gpu.sh: the float32 step against PyTorch failed (above).'
  python3 -m benchmarks.train_step --torch-device="$torch_device" --rounds=3 \
      --min-seconds=3 --compute-dtype=bfloat16 --peak-tflops="$peak" \
      --settings=resnet34-224x224x3-b256 ||
      echo 'gpu.sh: the bfloat16 step against PyTorch failed (above).'
else
  echo 'gpu.sh: torch is not installed; skipping the step against PyTorch.'
fi
exit $status
