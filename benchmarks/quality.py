"""Does the combined objective beat its parts? Ablations on real images.

Run from the repository root:

  JAX_PLATFORMS=cpu python -m benchmarks.quality --datasets=digits --seeds=0,1,2

Variants: k-means on the raw pixels; CC-only (instance + cluster + entropy);
CC + reconstruction; CC + KL; the full method; the full method plus the
neighbour terms (SCAN's consistency, a neighbour as instance positive), plus
10 epochs of self-labelling, or both; and self-labelling on the pseudo-labels
of its start, fixed (train.selflabel_fixed). Each is the paper's method in the
dataset's config (any stage beyond it that the config enables switched off)
with a few fields changed (a loss weight of 0 removes its term), every other setting
equal, so the comparison is of the objectives alone. For the variants
without the KL term, the DEC assignment is nearest-centroid of k-means on
the final embeddings (as `--mode=evaluate` does). Prints ACC/NMI/ARI as
mean ± std over the seeds, for the cluster head and the DEC assignment, the
ACC of k-means on the final embeddings (DEC's own baseline: the KL stage
should beat it), the share of images the cluster head predicts above
train.selflabel_threshold with their ACC (the pseudo-labels self-labelling
takes), and the wall time of each run.

Datasets: digits; the 10,000 test images of MNIST, Fashion-MNIST and
CIFAR-10 (mnist_test, fashion_mnist_test, cifar10_test); a fixed 1,500 of
the last two (fashion_mnist_test_1500, cifar10_test_1500), a user's small
folder of photos in size; and 4,000 CIFAR-10 train images
(cifar10_train_4000), photos the configs were not tuned on.

Runs split across workers (e.g. one per core, `taskset -c 0` and `-c 1`,
each with --json=FILE) are tabulated together with --table_from FILE ...
Each run prints one line when it ends; --verbose adds the trainer's progress
lines (loss terms, img/s, ETA) while it runs.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import json
import logging as pylogging
import os
import sys
import shutil
import statistics
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
from absl import logging

from jcc.configs import default
from jcc import evaluate
from jcc import parallel
from jcc import progress
from jcc import sources
from jcc import workflows

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data')
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'  # dataset-fashion-mnist


@functools.cache
def fashion_mnist_test_folder() -> str:
  """A temporary folder linking only the 10,000 Fashion-MNIST test images.

  One per process, removed when the process exits.
  """
  folder = tempfile.mkdtemp(prefix='fashion_mnist_test_')
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  for stem in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
    for name in (stem, stem + '.gz'):
      if os.path.exists(os.path.join(FASHION_MNIST, name)):
        os.symlink(os.path.join(FASHION_MNIST, name),
                   os.path.join(folder, name))
  return folder


SUBSET_SIZE = 1500  # a user's small folder of photos


def subset_npz(module: str, dataset_overrides, size: int = SUBSET_SIZE):
  """config.dataset overrides for a fixed random ``size`` images of a set.

  The same images on every call and machine (rng seed 0), written once per
  process to a temporary .npz, removed when the process exits.
  """
  config = importlib.import_module(f'jcc.configs.{module}').get_config()
  config.dataset.update(dataset_overrides() if callable(dataset_overrides)
                        else dataset_overrides)
  # The source's own images, not resized: a config may cut its views from
  # a larger size than it trains at (dataset.crop_from_size).
  dataset = sources.DATASETS[config.dataset.name].load(config.dataset)
  rows = np.sort(np.random.default_rng(0).choice(
      len(dataset), size, replace=False))
  folder = tempfile.mkdtemp(prefix=f'{module}_{size}_')
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  path = os.path.join(folder, 'subset.npz')
  np.savez(path, images=dataset.images[rows], labels=dataset.labels[rows])
  return dict(name='npz', path=path)


@functools.cache
def cifar10_train_4000() -> dict:
  """config.dataset overrides for the 4,000 CIFAR-10 *train* images of
  cifar10_lossless_5k.npz: photos no config was tuned on (the configs were
  chosen on the test set). Written once per process to a temporary .npz."""
  with np.load(os.path.join(SHARED, 'cifar10_lossless_5k.npz')) as data:
    train = data['split'] == 'train'
    images, labels = data['images'][train], data['labels'][train]
  folder = tempfile.mkdtemp(prefix='cifar10_train_4000_')
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  path = os.path.join(folder, 'train.npz')
  np.savez(path, images=images, labels=labels)
  return dict(name='npz', path=path)


# name: (config module, overrides of config.dataset, or a function that
# returns them). The *_test sets are the 10,000 test images of each; the
# *_1500 sets 1,500 of them.
DATASETS = {
    'digits': ('digits', {}),
    'mnist_test': ('mnist', dict(name='npz', path=os.path.join(
        SHARED, 'mnist_test.npz'))),
    'fashion_mnist_test': ('fashion_mnist', lambda: dict(
        path=fashion_mnist_test_folder())),
    'cifar10_test': ('cifar10_small', dict(name='npz', path=os.path.join(
        SHARED, 'cifar10_test_jpeg.npz'))),
    'cifar10_train_4000': ('cifar10_small', cifar10_train_4000),
}
DATASETS.update({
    f'{name}_{SUBSET_SIZE}': (module, functools.partial(
        subset_npz, module, overrides))
    for name, (module, overrides) in list(DATASETS.items())
    if name in ('fashion_mnist_test', 'cifar10_test')})

# name: the config fields it changes (a loss weight of 0 removes a term).
_NEIGHBORS = {'loss.neighbor_consistency': 1.0, 'loss.neighbor_instance': 1.0}
_SELFLABEL = {'train.selflabel_epochs': 10}
VARIANTS = {
    'cc': {'loss.reconstruction': 0.0, 'loss.kl': 0.0},
    'cc+rec': {'loss.kl': 0.0},
    'cc+kl': {'loss.reconstruction': 0.0},
    'full': {},
    # Beyond the paper: neighbours mined at the end of the warm-up, and 10
    # epochs of self-labelling after the method.
    'full+neighbors': _NEIGHBORS,
    'full+selflabel': _SELFLABEL,
    'full+both': {**_NEIGHBORS, **_SELFLABEL},
    # Self-labelling on the pseudo-labels of the stage's start, kept fixed.
    'full+selflabel_fixed': {**_SELFLABEL, 'train.selflabel_fixed': True},
    # The instance term against a momentum encoder's keys (MoCo's m = 0.99).
    'full+momentum': {'train.momentum_encoder': 0.99},
}
METRICS = ('acc', 'nmi', 'ari')


def dataset_config(name: str, overrides: list[str]):
  module, dataset_overrides = DATASETS[name]
  # The variants start from the paper's method (its four terms, no stage
  # beyond it), whatever the dataset config adds to it or leaves out by
  # default (configs/cifar10_small.py trains without reconstruction).
  config = default.paper_method(
      importlib.import_module(f'jcc.configs.{module}').get_config())
  config.loss.reconstruction = default.get_config().loss.reconstruction
  if callable(dataset_overrides):
    dataset_overrides = dataset_overrides()
  config.dataset.update(dataset_overrides)
  set_overrides(config, overrides)
  return config


def set_overrides(config, overrides: list[str]) -> None:
  """Sets each field=value (a JSON value, or the text itself for a text
  field), e.g. train.num_epochs=10, train.warmup_terms=instance."""
  for override in overrides:
    field, value = override.split('=', 1)
    *path, leaf = field.split('.')
    node = config
    for part in path:
      node = node[part]
    if isinstance(node[leaf], str) and not value.startswith('"'):
      node[leaf] = value
    else:
      node[leaf] = type(node[leaf])(json.loads(value))


def kmeans_on_pixels(config, seed: int) -> dict:
  dataset = sources.load_dataset(config.dataset)
  pixels = dataset.images.reshape(len(dataset), -1).astype(np.float32) / 255
  _, assigned = evaluate.kmeans(pixels, config.dataset.num_clusters, seed,
                                n_init=10)
  return {'cluster_head': evaluate.clustering_metrics(dataset.labels,
                                                      assigned)}


def run_variant(config, variant: str, seed: int) -> dict:
  config = config.copy_and_resolve_references()
  config.seed = seed
  for field, value in VARIANTS[variant].items():
    group, leaf = field.split('.')
    config[group][leaf] = value
  with tempfile.TemporaryDirectory() as workdir:
    return workflows.train_and_evaluate(config, workdir).results


def json_record(dataset: str, variant: str, seed: int, seconds: float,
                result: dict) -> dict:
  """One run as --json appends it: every assignment's metrics, or None."""
  return {'dataset': dataset, 'variant': variant, 'seed': seed,
          'seconds': seconds,
          **{name: result.get(name) for name in evaluate.ASSIGNMENTS},
          'confident': result.get('confident')}


def summarize(values: list[float]) -> str:
  mean = statistics.mean(values)
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{mean:.3f} ± {std:.3f}'


def table(name: str, rows: list[tuple[str, list[dict], float]],
          num_seeds: int, num_epochs: int | None) -> str:
  """The Markdown table: a row per (variant, runs, mean seconds per run)."""
  epochs = f'; {num_epochs} epochs per run' if num_epochs else ''
  lines = [f'{name}: {num_seeds} seeds, mean ± std{epochs}',
           '| variant | head ACC | head NMI | head ARI | DEC ACC | DEC NMI | '
           'DEC ARI | k-means on embeddings ACC | head confident share | '
           'ACC on confident | s/run |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  columns = [(a, m) for a in ('cluster_head', 'dec') for m in METRICS]
  for variant, runs, secs in rows:
    cells = []
    for assignment, metric in columns + [('kmeans', 'acc')]:
      values = [r[assignment][metric] for r in runs if r.get(assignment)]
      cells.append(summarize(values) if values else '–')
    # The pseudo-labels self-labelling takes (or would take), and how right.
    for key in ('fraction', 'acc'):
      values = [r['confident'][key] for r in runs
                if r.get('confident') and r['confident'][key] is not None]
      cells.append(summarize(values) if values else '–')
    lines.append(f'| {variant} | ' + ' | '.join(cells) + f' | {secs:.0f} |')
  return '\n'.join(lines)


def tables_from_json(paths: list[str]) -> str:
  """Tables from the runs that --json appended (e.g. by parallel workers)."""
  runs = {}  # dataset -> variant -> list of records, in file order
  for path in paths:
    with open(path) as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          runs.setdefault(record['dataset'], {}).setdefault(
              record['variant'], []).append(record)
  order = ['kmeans', *VARIANTS]
  out = []
  for name, by_variant in runs.items():
    variants = sorted(by_variant, key=lambda v: (
        order.index(v) if v in order else len(order), v))
    rows = [(v, by_variant[v],
             statistics.mean(r['seconds'] for r in by_variant[v]))
            for v in variants]
    seeds = {len(records) for records in by_variant.values()}
    out.append(table(name, rows, max(seeds), None) +
               ('' if len(seeds) == 1 else
                '\n(variants have different numbers of runs)'))
  return '\n\n'.join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--datasets', default='digits')
  parser.add_argument('--variants', default='kmeans,' + ','.join(VARIANTS))
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--override', action='append', default=[],
                      help='config field=value for every run, e.g. '
                      'train.num_epochs=10 (repeatable)')
  parser.add_argument('--json', help='also append every run to this file')
  parser.add_argument('--table_from', nargs='+', metavar='JSONL',
                      help='train nothing: print the tables of the runs '
                      'that --json wrote to these files')
  parser.add_argument('--verbose', action='store_true',
                      help="show the trainer's progress lines during runs")
  args = parser.parse_args()
  if args.table_from:
    print(tables_from_json(args.table_from))
    return
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)
  pylogging.getLogger('absl').addFilter(progress.QuietLibraries())
  seeds = [int(s) for s in args.seeds.split(',')]
  names = args.datasets.split(',')
  # As the command line does: one JAX device per core on a CPU.
  parallel.use_one_cpu_device_per_core(
      dataset_config(names[0], args.override).train.batch_size)
  for name in names:
    config = dataset_config(name, args.override)
    rows = []
    for variant in args.variants.split(','):
      runs, seconds = [], []
      for seed in seeds:
        start = time.time()
        if variant == 'kmeans':
          result = kmeans_on_pixels(config, seed)
        else:
          result = run_variant(config, variant, seed)
        seconds.append(time.time() - start)
        runs.append(result)
        print(f'{name} {variant} seed={seed}: cluster head ACC '
              f'{result["cluster_head"]["acc"]:.3f} '
              f'({seconds[-1]:.0f} s)', flush=True)
        if args.json:
          with open(args.json, 'a') as f:
            f.write(json.dumps(json_record(name, variant, seed, seconds[-1],
                                           result)) + '\n')
      rows.append((variant, runs, statistics.mean(seconds)))
    print()
    print(table(name, rows, len(seeds), config.train.num_epochs), flush=True)


if __name__ == '__main__':
  main()
