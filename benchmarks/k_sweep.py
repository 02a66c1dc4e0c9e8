"""Does the K sweep point at the true number of classes? Real images.

Run from the repository root:

  JAX_PLATFORMS=cpu python -m benchmarks.k_sweep \
      --datasets=digits,mnist_test,fashion_mnist_test --ks=10,20

Trains each dataset's own config (as a user would, datasets as in
benchmarks/quality.py) once per K in --ks, then prints, per run, the K' that
the embedding supports (results.json's ``k_sweep``: k-means for K' = 2 … 2K
on the L2-normalised embeddings, scored by silhouette), the silhouette at
K' = 10 and at the K trained with, and the cluster head's ACC. --override
field=value shortens the runs (e.g. train.num_epochs=10), on every dataset.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # pylint: disable=g-import-not-at-top

from benchmarks import quality
from jcc import parallel
from jcc import workflows


def dataset_config(name: str, num_clusters: int, overrides: list[str]):
  """The dataset's own config (not the paper's method alone) with K set."""
  module, dataset_overrides = quality.DATASETS[name]
  config = importlib.import_module(f'jcc.configs.{module}').get_config()
  if callable(dataset_overrides):
    dataset_overrides = dataset_overrides()
  config.dataset.update(dataset_overrides)
  config.dataset.num_clusters = num_clusters
  quality.set_overrides(config, overrides)
  return config


def row(name: str, k: int, seconds: float, results: dict) -> str:
  sweep, head = results['k_sweep'], results['cluster_head']
  scores = sweep['silhouette']
  return (f"| {name} | {k} | {sweep['best_k']} | {scores.get('10', 0):.3f} | "
          f"{scores.get(str(k), 0):.3f} | {head['acc']:.3f} | "
          f'{seconds:.0f} s |')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--datasets', default='digits')
  parser.add_argument('--ks', default='10,20')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--override', action='append', default=[],
                      help='field=value (JSON value), on every dataset')
  parser.add_argument('--json', help='append each run to this file')
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  # As the command line does: one JAX device per core on a CPU.
  parallel.use_one_cpu_device_per_core(dataset_config(
      args.datasets.split(',')[0], int(args.ks.split(',')[0]),
      args.override).train.batch_size)
  print('| dataset | K trained | K\' supported | silhouette at 10 | '
        'silhouette at K | head ACC | time |\n|---|---|---|---|---|---|---|',
        flush=True)
  for name in args.datasets.split(','):
    for k in (int(k) for k in args.ks.split(',')):
      config = dataset_config(name, k, args.override)
      config.seed = args.seed
      start = time.time()
      with tempfile.TemporaryDirectory() as workdir:
        results = workflows.train_and_evaluate(config, workdir).results
      seconds = time.time() - start
      print(row(name, k, seconds, results), flush=True)
      if args.json:
        with open(args.json, 'a') as f:
          f.write(json.dumps({'dataset': name, 'k': k, 'seed': args.seed,
                              'seconds': seconds,
                              'overrides': args.override,
                              'k_sweep': results['k_sweep'],
                              'cluster_head': results['cluster_head']}) + '\n')


if __name__ == '__main__':
  main()
