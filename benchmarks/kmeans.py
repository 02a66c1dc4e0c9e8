"""How does jcc's k-means from summed statistics compare with scikit-learn's?

Run from the repository root:

  python -m benchmarks.kmeans --n=10000,70000

`jcc.kmeans.fit` (Lloyd's algorithm from cluster statistics, the passes'
k-means, here on one process) against scikit-learn's `KMeans` (as
`jcc.evaluate.kmeans` runs it, for the final evaluation) on the same rows in
the same run, each with n_init = 20 (train.kmeans_n_init's default): the
seconds of each and the inertia of jcc's centroids over scikit-learn's
(1.0: as good a partition). The rows are MNIST-like embeddings: the 10,000
test digits of ../shared/data/mnist_test.npz reduced to --dim dimensions by
PCA, repeated with small noise up to N, or, without that file, Gaussian
blobs around 10 centres.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
from sklearn import datasets as sk_datasets
from sklearn import decomposition

from jcc import evaluate
from jcc import kmeans

MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), '..', 'shared', 'data', 'mnist_test.npz')


def rows(n: int, dim: int) -> tuple[np.ndarray, str]:
  """(n, dim) float32 rows, and what they are."""
  if not os.path.exists(MNIST):
    x, _ = sk_datasets.make_blobs(n, n_features=dim, centers=10,
                                  cluster_std=8, random_state=0)
    return x.astype(np.float32), 'Gaussian blobs'
  with np.load(MNIST) as data:
    pixels = data['images'].reshape(len(data['images']), -1) / 255.0
  base = decomposition.PCA(dim, random_state=0).fit_transform(pixels)
  copies = [base + np.random.default_rng(i).normal(0, 0.05, base.shape)
            for i in range(-(-n // len(base)))]
  return np.concatenate(copies)[:n].astype(np.float32), 'MNIST, PCA'


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
  return kmeans.statistics(x, centroids.astype(np.float64))[2]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', default='10000,70000')
  parser.add_argument('--dim', type=int, default=128)
  parser.add_argument('--k', type=int, default=10)
  parser.add_argument('--n-init', type=int, default=20)
  args = parser.parse_args()
  for n in map(int, args.n.split(',')):
    x, what = rows(n, args.dim)
    start = time.time()
    ours = kmeans.fit(x, np.arange(n), n, args.k, 0, args.n_init)
    ours_s = time.time() - start
    start = time.time()
    theirs, _ = evaluate.kmeans(x, args.k, 0, args.n_init)
    theirs_s = time.time() - start
    print(f'N={n} d={args.dim} K={args.k} ({what}): jcc.kmeans {ours_s:.1f} s,'
          f' scikit-learn {theirs_s:.1f} s ({theirs_s / ours_s:.2f}x); '
          f'inertia jcc / scikit-learn '
          f'{inertia(x, ours) / inertia(x, theirs):.6f}', flush=True)


if __name__ == '__main__':
  main()
