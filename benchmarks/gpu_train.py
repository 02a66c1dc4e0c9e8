"""A short end-to-end training on one accelerator: ACC, images/s, step time, MFU.

Run from the repository root (benchmarks/gpu.sh runs it on a GPU):

  python -m benchmarks.gpu_train --data=../shared/data/cifar10_test_jpeg.npz

The CIFAR-10 test set (an .npz of uint8 images and labels, or a set
``python -m jcc.convert`` wrote, such as all 60,000 from
``--input=tfds:cifar10``), CIFAR-10's config with the CIFAR-stem ResNet-18
at 32×32 in bfloat16, as many epochs as fit in --budget-seconds (or
--epochs): the step is compiled and timed first, and the epoch count is the
budget over the measured epoch time and an allowance for the host passes
(k-means, P, evaluation). --recipe=simclr trains SimCLR's optimiser
(``default.simclr_optimizer``, the CPU config's) in place of the config's
Adam. Then the whole run, through
``jcc.workflows.train_and_evaluate`` as the command line runs it, and one
line of figures: the cluster head's ACC/NMI/ARI, images/s of the training
steps (the run's own progress lines), the step time, XLA's FLOP count of
the step and the model FLOP utilisation against --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from benchmarks import timing
from benchmarks.jcc_step import step_runner
from jcc.configs import cifar10
from jcc.configs import default
from jcc.sources import streamed
from jcc import workflows


def run_config(data: str, args):
  """CIFAR-10's config on the .npz or converted set at ``data``, with the
  run's settings."""
  config = cifar10.get_config()
  config.dataset.name = 'converted' if os.path.isdir(data) else 'npz'
  config.dataset.path = data
  config.model.backbone = args.backbone
  config.train.batch_size = args.batch_size
  config.train.compute_dtype = args.compute_dtype
  config.train.min_steps = 0
  config.train.log_every_steps = 20
  if args.recipe == 'simclr':
    default.simclr_optimizer(config)  # after the batch size: it scales
  return config


def count_images(data: str) -> int:
  """The number of images in the .npz or converted set at ``data``."""
  if os.path.isdir(data):
    return int(streamed.read_info(data)['count'])
  with np.load(data) as arrays:
    return len(arrays['images'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='../shared/data/cifar10_test_jpeg.npz')
  parser.add_argument('--budget-seconds', type=float, default=180.0,
                      help='for the training run, compilation included')
  parser.add_argument('--backbone', default='resnet18_cifar')
  parser.add_argument('--batch-size', type=int, default=256)
  parser.add_argument('--compute-dtype', default='bfloat16')
  parser.add_argument('--peak-tflops', type=float, default=989.0,
                      help='the chip\'s dense peak for the compute dtype '
                      '(H200 bfloat16: 989)')
  parser.add_argument('--recipe', choices=('config', 'simclr'),
                      default='config', help="the config's optimiser (CC's "
                      "Adam) or SimCLR's (default.simclr_optimizer)")
  parser.add_argument('--epochs', type=int, default=0,
                      help='train this many epochs (0: as many as fit in '
                      '--budget-seconds)')
  parser.add_argument('--workdir', default='')
  args = parser.parse_args()
  data = os.path.abspath(args.data)
  if not (os.path.isfile(data) or streamed.is_converted(data)):
    sys.exit(f'gpu_train: no .npz or converted set at {data} (--data)')
  num_images = count_images(data)
  config = run_config(data, args)
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
        f'({jax.device_count()} device(s)); {num_images} images, '
        f'{config.model.backbone} at {config.dataset.image_size}px, batch '
        f'{config.train.batch_size}, {config.train.compute_dtype}, '
        f'{config.train.optimizer} at {config.train.learning_rate:g}',
        flush=True)

  # The step alone: its time sets the epoch count. XLA:CPU counts its FLOPs:
  # XLA:GPU's count leaves out the convolutions it hands to cuDNN (on an
  # H200, 20 GFLOP for this step at batch 256, where XLA:CPU counts 412 GFLOP
  # at batch 64).
  run = step_runner(config, 3)
  step_seconds = timing.measure_alternating({'step': run}, 3, 1.0)['step']
  flops = (run.flops if jax.default_backend() == 'cpu' else
           step_runner(config, 3, jax.devices('cpu')[:1]).flops)
  steps_per_epoch = num_images // config.train.batch_size
  # Host passes (P every target_update_every_steps, k-means, evaluation)
  # and compilation: half the budget, measured from runs of this size.
  epochs = args.epochs or max(2, int(args.budget_seconds / 2 /
                                      (steps_per_epoch * step_seconds)))
  config.train.num_epochs = epochs
  config.train.warmup_epochs = max(1, epochs // 10)
  print(f'step alone: {step_seconds * 1e3:.1f} ms; training {epochs} epochs '
        f'of {steps_per_epoch} steps (warm-up {config.train.warmup_epochs})',
        flush=True)

  workdir = args.workdir or tempfile.mkdtemp(prefix='jcc-gpu-train-')
  start = time.perf_counter()
  results = workflows.train_and_evaluate(config, workdir).results
  wall = time.perf_counter() - start
  lines = [json.loads(line) for line in
           pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()]
  rates = [line['images_per_second'] for line in lines
           if 'images_per_second' in line]
  rate = statistics.median(rates) if rates else float('nan')
  step_time = config.train.batch_size / rate
  mfu = (flops / step_time / (args.peak_tflops * 1e12)
         if flops else float('nan'))
  head = results['cluster_head']
  print(f'gpu_train: {epochs} epochs in {wall:.0f} s ({args.recipe} '
        f'recipe) | cluster head ACC '
        f'{head["acc"]:.3f} NMI {head["nmi"]:.3f} ARI {head["ari"]:.3f} | '
        f'{rate:.0f} img/s (median of {len(rates)} progress lines) | step '
        f'{step_time * 1e3:.1f} ms (alone {step_seconds * 1e3:.1f} ms) | '
        f'{(flops or 0) / 1e9:.0f} GFLOP/step (XLA:CPU) | MFU {mfu:.1%} of '
        f'{args.peak_tflops:.0f} TFLOP/s', flush=True)


if __name__ == '__main__':
  main()
