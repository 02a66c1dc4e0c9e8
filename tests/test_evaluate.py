"""jcc.evaluate: clustering metrics and full-dataset prediction."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from jcc import evaluate
from jcc import pipeline


def test_accuracy_is_invariant_to_renaming_clusters():
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  renamed = np.array([2, 2, 0, 0, 1, 1, 1])
  assert evaluate.cluster_accuracy(labels, renamed) == 1.0


def test_accuracy_uses_the_best_one_to_one_map():
  labels = np.array([0, 0, 0, 1, 1, 1])
  preds = np.array([1, 1, 0, 0, 0, 0])  # best map: 1→0, 0→1: 5 of 6 right
  assert evaluate.cluster_accuracy(labels, preds) == pytest.approx(5 / 6)
  # Two clusters cannot both map to label 1.
  preds = np.array([0, 0, 0, 1, 1, 2])
  assert evaluate.cluster_accuracy(labels, preds) == pytest.approx(5 / 6)


def test_metrics_match_scikit_learn():
  rng = np.random.default_rng(0)
  labels, preds = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
  got = evaluate.clustering_metrics(labels, preds)
  assert got['nmi'] == pytest.approx(
      sk_metrics.normalized_mutual_info_score(labels, preds))
  assert got['ari'] == pytest.approx(
      sk_metrics.adjusted_rand_score(labels, preds))
  assert 0.2 <= got['acc'] <= 1.0


def test_kmeans_finds_separated_blobs():
  rng = np.random.default_rng(1)
  centers = np.array([[0, 0], [10, 10], [-10, 10]], np.float32)
  labels = np.repeat(np.arange(3), 30)
  points = centers[labels] + rng.normal(size=(90, 2))
  centroids, assigned = evaluate.kmeans(points, 3, seed=0)
  assert centroids.shape == (3, 2)
  assert evaluate.cluster_accuracy(labels, assigned) == 1.0


@pytest.mark.parametrize('num,batch', [(10, 4), (8, 4), (3, 8)])
def test_predict_batches_visits_every_example_once(num, batch):
  images = np.arange(num, dtype=np.float32).reshape(num, 1)
  seen = []

  def forward(x):
    x = np.asarray(x)
    assert x.shape == (batch, 1)  # always the one compiled shape
    seen.append(x[:, 0])
    return {'double': 2 * x[:, 0]}

  out = evaluate.predict_batches(forward, pipeline.eval_batches(images, batch))
  np.testing.assert_array_equal(out['double'], 2 * np.arange(num))
  assert len(seen) == -(-num // batch)


def test_results_table_and_file(tmp_path):
  metrics = {'acc': 0.9, 'nmi': 0.8, 'ari': 0.7}
  results = {'dataset': 'digits', 'num_examples': 10, 'num_clusters': 2,
             'seconds': 1.0, 'cluster_head': metrics, 'dec': metrics,
             'kmeans': None}
  table = evaluate.format_results_table(results)
  assert 'cluster_head    0.900  0.800  0.700' in table
  assert 'no labels' in table
  path = evaluate.write_results(str(tmp_path), results)
  assert path.endswith('results.json')


def test_confident_predictions_share_and_accuracy():
  # Six images, two clusters; the head's matching maps cluster 1 to class 0
  # and cluster 0 to class 1 (four of six right). Three are confident: two
  # right under that map, one wrong.
  labels = np.array([0, 0, 0, 1, 1, 1])
  probs = np.array([[0.001, 0.999], [0.4, 0.6], [0.995, 0.005],
                    [0.999, 0.001], [0.3, 0.7], [0.9, 0.1]])
  confident = evaluate.confident_predictions(labels, probs, 0.99)
  assert confident == {'threshold': 0.99, 'fraction': 0.5,
                       'acc': pytest.approx(2 / 3)}
  assert evaluate.confident_predictions(None, probs, 0.99)['acc'] is None
  nobody = evaluate.confident_predictions(labels, probs, 0.9999)
  assert nobody['fraction'] == 0.0 and nobody['acc'] is None


def test_results_table_says_how_many_predictions_are_confident():
  metrics = {'acc': 0.9, 'nmi': 0.8, 'ari': 0.7}
  results = {'dataset': 'digits', 'num_examples': 10, 'num_clusters': 2,
             'seconds': 1.0, 'cluster_head': metrics, 'dec': metrics,
             'kmeans': metrics,
             'confident': {'threshold': 0.99, 'fraction': 0.4, 'acc': 0.75}}
  table = evaluate.format_results_table(results)
  assert ('head confident: 40.0% of images above 0.99, ACC 0.750 on them'
          in table)
