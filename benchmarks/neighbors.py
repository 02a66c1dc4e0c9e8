"""How long does mining every image's k nearest neighbours take?

Run from the repository root:

  JAX_PLATFORMS=cpu python -m benchmarks.neighbors --n=60000

`jcc.neighbors.nearest_neighbors` (exact cosine top-k on the devices, in
blocks) against scikit-learn's brute-force `NearestNeighbors` on the same
random embeddings in the same run, with the fraction of neighbour lists that
agree (ties aside, all should) and the seconds of each. The embeddings are
random unit vectors: the time depends on N, d and k only.
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

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn.neighbors import NearestNeighbors

from jcc import neighbors


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', type=int, default=60_000)
  parser.add_argument('--dim', type=int, default=128)
  parser.add_argument('--k', type=int, default=20)
  parser.add_argument('--skip-reference', action='store_true',
                      help='time jcc only (scikit-learn needs N² floats of '
                      'time, and memory in chunks)')
  args = parser.parse_args()
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
        f'({jax.device_count()} device(s)), {os.cpu_count()} CPUs; '
        f'N={args.n} d={args.dim} k={args.k}', flush=True)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
  neighbors.nearest_neighbors(x[:1000], args.k)  # compile once, untimed
  start = time.perf_counter()
  got = neighbors.nearest_neighbors(x, args.k)
  ours = time.perf_counter() - start
  print(f'jcc.neighbors      {ours:8.1f} s  (blocks of '
        f'{neighbors.block_rows(args.n, jax.device_count())} rows)',
        flush=True)
  if args.skip_reference:
    return
  start = time.perf_counter()
  reference = NearestNeighbors(
      n_neighbors=args.k + 1, metric='cosine', algorithm='brute').fit(x)
  want = reference.kneighbors(x, return_distance=False)
  theirs = time.perf_counter() - start
  # Drop each row's own index (scikit-learn counts the point itself).
  want = np.array([[j for j in row if j != i][:args.k]
                   for i, row in enumerate(want)])
  same = np.mean([set(a) == set(b) for a, b in zip(got, want)])
  print(f'scikit-learn brute {theirs:8.1f} s  ({theirs / ours:.1f}x jcc)\n'
        f'same neighbour sets: {same:.4f} of rows')


if __name__ == '__main__':
  main()
