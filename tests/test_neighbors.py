"""Neighbour mining against brute force in float64 NumPy."""

import numpy as np
import pytest

from jcc import neighbors
from jcc import parallel
from tests.conftest import SHARDED_DEVICES, devices


def np_neighbors(x, k):
  x = x.astype(np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = x @ x.T
  np.fill_diagonal(sim, -np.inf)
  return np.argsort(-sim, axis=1, kind='stable')[:, :k]


@pytest.mark.parametrize('n,d,k', [(2, 3, 1), (37, 5, 4), (300, 16, 10)])
@pytest.mark.parametrize('count', [1] + SHARDED_DEVICES)
def test_matches_brute_force_over_many_padded_blocks(n, d, k, count):
  rng = np.random.default_rng(n)
  x = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(
      0.1, 10, size=(n, 1)).astype(np.float32)  # norms must not matter
  mesh = parallel.make_mesh(devices(count))
  # Blocks of 8 rows (or one per device): many blocks, the last one padded.
  got = neighbors.nearest_neighbors(x, k, mesh, block_bytes=4 * n * 8)
  assert got.shape == (n, k) and got.dtype == np.int32
  np.testing.assert_array_equal(got, np_neighbors(x, k))


def test_never_its_own_neighbour_even_among_duplicates():
  # Four copies of two points: the nearest are the other copies, lower
  # index first, never the row itself.
  x = np.array([[1.0, 0.0], [0.0, 1.0]] * 4, np.float32)
  got = neighbors.nearest_neighbors(x, 3)
  for i, row in enumerate(got):
    assert i not in row
    assert list(row) == [j for j in range(i % 2, 8, 2) if j != i]


def test_block_rows_fit_the_budget_and_the_devices():
  assert neighbors.block_rows(60_000, 8) % 8 == 0
  assert neighbors.block_rows(60_000, 8) * 60_000 * 4 <= neighbors.BLOCK_BYTES
  assert neighbors.block_rows(10, 8) == 16  # never more than the padded rows
  assert neighbors.block_rows(10**9, 4) == 4  # at least one row per device


def test_accuracy_counts_neighbours_with_the_same_label():
  labels = np.array([0, 0, 1, 1])
  assert neighbors.neighbor_accuracy(np.array([[1], [0], [3], [0]]),
                                     labels) == 0.75


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match='1 <= k < N'):
    neighbors.nearest_neighbors(np.ones((5, 2), np.float32), 5)
