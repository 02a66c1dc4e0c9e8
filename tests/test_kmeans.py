"""k-means from all-reduced statistics (jcc.kmeans)."""

import threading

import numpy as np
import pytest
from sklearn import cluster as sk_cluster
from sklearn import datasets as sk_datasets
from sklearn import metrics as sk_metrics

from jcc import kmeans


def _blobs(n=600, k=5, seed=0):
  rows, labels = sk_datasets.make_blobs(
      n, n_features=8, centers=k, cluster_std=1.5, random_state=seed)
  return rows.astype(np.float32), labels


class _Processes:
  """``count`` threads as processes; ``sum`` all-reduces their arrays."""

  def __init__(self, count: int):
    self._barrier = threading.Barrier(count)
    self._parts: dict[int, np.ndarray] = {}
    self._total = None

  def sum(self, me: int, array: np.ndarray) -> np.ndarray:
    self._parts[me] = array
    if self._barrier.wait() == 0:
      self._total = sum(self._parts[i] for i in sorted(self._parts))
    self._barrier.wait()
    total = self._total.copy()
    self._barrier.wait()  # all have read it before the next sum
    return total


def _fit_split(rows, row_indices_per_process, k, seed):
  processes = _Processes(len(row_indices_per_process))
  results = [None] * len(row_indices_per_process)

  def run(me, indices):
    results[me] = kmeans.fit(
        rows[indices], indices, len(rows), k, seed, n_init=3,
        sum_over_processes=lambda a: processes.sum(me, a))

  threads = [threading.Thread(target=run, args=(i, idx))
             for i, idx in enumerate(row_indices_per_process)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return results


def test_it_finds_the_clusters_scikit_learn_finds():
  rows, labels = _blobs()
  centroids = kmeans.fit(rows, np.arange(len(rows)), len(rows), 5, seed=0)
  assert centroids.shape == (5, 8) and centroids.dtype == np.float32
  ours = kmeans.statistics(rows, centroids)[2]
  theirs = sk_cluster.KMeans(5, n_init=10, random_state=0).fit(rows)
  assert ours <= theirs.inertia_ * (1 + 1e-4)
  assigned = ((rows[:, None] - centroids) ** 2).sum(-1).argmin(1)
  assert sk_metrics.adjusted_rand_score(labels, assigned) > 0.99


@pytest.mark.parametrize('split', ['halves', 'interleaved', 'uneven'])
def test_rows_split_between_processes_give_one_process_centroids(split):
  rows, _ = _blobs(n=500)
  order = np.arange(len(rows))
  parts = {'halves': [order[:250], order[250:]],
           'interleaved': [order[i::2] for i in range(2)],
           'uneven': [order[:30], order[30:400], order[400:]]}[split]
  one = kmeans.fit(rows, order, len(rows), 5, seed=3, n_init=3)
  for got in _fit_split(rows, parts, 5, seed=3):
    np.testing.assert_allclose(got, one, rtol=1e-6, atol=1e-6)


def test_the_seed_sample_is_the_same_rows_however_they_are_split(
    monkeypatch):
  monkeypatch.setattr(kmeans, 'SEED_SAMPLE', 50)
  rows, _ = _blobs(n=200)
  whole = kmeans.seed_sample(rows, np.arange(200), 200, seed=1)
  assert whole.shape == (50, 8)
  assert len(np.unique(whole, axis=0)) == 50
  backwards = np.arange(200)[::-1]
  processes = _Processes(2)
  got = [None, None]

  def run(me, indices):
    got[me] = kmeans.seed_sample(rows[indices], indices, 200, 1,
                                 lambda a: processes.sum(me, a))

  threads = [threading.Thread(target=run, args=(i, backwards[i::2]))
             for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  np.testing.assert_array_equal(got[0], whole)
  np.testing.assert_array_equal(got[1], whole)
  assert not np.array_equal(
      whole, kmeans.seed_sample(rows, np.arange(200), 200, seed=2))


def test_fewer_distinct_rows_than_clusters_leave_some_empty_with_a_warning(
    caplog):
  rows = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
  centroids = kmeans.fit(rows, np.arange(30), 30, 5, seed=0, n_init=2)
  assert np.isfinite(centroids).all()
  assert 'left 2 of K=5 clusters empty' in caplog.text


def test_each_row_is_assigned_its_nearest_centroid():
  rows, _ = _blobs(n=300)
  centroids = rows[[0, 100, 200]] + 0.5
  want = ((rows[:, None] - centroids) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(kmeans.nearest(rows, centroids), want)
  assert kmeans.nearest(rows[:0], centroids).shape == (0,)
