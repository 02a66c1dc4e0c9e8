"""jcc's train step as a benchmark runner: one call, one step, blocking.

Run as a script, it times one config's step with a field at each of its
values, in alternation, on this machine's CPU cores as the command line
uses them:

  python -m benchmarks.jcc_step --config=cifar10_small \
      --field=dataset.crop_from_size --values=0,32
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from benchmarks import timing
from jcc import parallel
from jcc import plan as plan_lib
from jcc import step


def step_runner(config, channels: int, devices=None,
                compiler_options: dict[str, str] | None = None):
  """A callable running jcc's joint train step (config's model and batch,
  and each image's neighbour where the config's neighbour terms have a
  weight) once, on ``devices`` (default: all), compiled with
  ``compiler_options`` (default: jcc's, :func:`jcc.conv.compiler_options`).
  ``run.flops`` is XLA's count of the step's floating-point operations, or
  None. The run is built as training builds it (:func:`jcc.step.build_run`),
  on a dataset of one batch of random images."""
  mesh = parallel.make_mesh(devices)
  batch = config.train.batch_size
  # Every step a joint one: the KL term counts from the first.
  plan = dataclasses.replace(plan_lib.plan_run(config.train, batch),
                             warmup_steps=0)
  built = step.build_run(config, channels, plan, mesh,
                         clustered=np.ones(batch, bool),
                         compiler_options=compiler_options)
  # The batch's images at the size the views are cut from, as training's.
  side = config.dataset.crop_from_size or config.dataset.image_size
  shape = (side, side, channels)
  images = np.random.default_rng(0).integers(0, 256, (batch,) + shape,
                                             dtype=np.uint8)
  train_step = built.steps.joint
  with_neighbors = train_step is not built.steps.warmup
  placed = jax.tree.map(parallel.to_global, step.Batch(
      images=images, indices=np.arange(batch, dtype=np.int32),
      neighbor_images=images[::-1].copy() if with_neighbors else None),
                        step.batch_shardings(mesh, neighbors=with_neighbors))
  holder = {'run': built.state}

  def run():
    holder['run'], metrics = train_step(holder['run'], placed)
    jax.block_until_ready(metrics)
  run.flops = step_flops(train_step, built.state, placed)
  return run


def step_flops(train_step, run_state, batch) -> float | None:
  """XLA's count of the floating-point operations of one compiled step."""
  try:
    cost = train_step.lower(run_state, batch).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='cifar10_small')
  parser.add_argument('--field', default='dataset.crop_from_size')
  parser.add_argument('--values', default='0,32')
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  module = importlib.import_module(f'jcc.configs.{args.config}')
  parallel.use_one_cpu_device_per_core(module.get_config().train.batch_size)
  group, leaf = args.field.rsplit('.', 1)
  runs = {}
  for value in args.values.split(','):
    config = module.get_config()
    node = config
    for part in group.split('.'):
      node = node[part]
    node[leaf] = type(node[leaf])(value)
    runs[f'{args.field}={value}'] = step_runner(config, args.channels)
  seconds = timing.measure_alternating(runs, args.rounds, 3.0)
  first = next(iter(seconds.values()))
  print(f'jax {jax.__version__}, {jax.device_count()} CPU device(s), '
        f'{args.config}, batch {module.get_config().train.batch_size}')
  for name, value in seconds.items():
    print(f'{name:40s} {value * 1e3:8.1f} ms/step, {first / value:5.2f}x '
          "the first one's speed")


if __name__ == '__main__':
  main()
