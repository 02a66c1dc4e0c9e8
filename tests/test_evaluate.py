"""jcc.evaluate: clustering metrics (NumPy only); batched prediction
(jcc.inference)."""

import pathlib

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from jcc import evaluate
from jcc import inference
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

  out = inference.predict_batches(forward, pipeline.eval_batches(images, batch))
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


def test_the_k_sweep_finds_the_number_of_well_separated_groups():
  # Four tight groups of directions: k-means with K' = 4 splits them
  # exactly, and its silhouette is the highest of 2 … 2K.
  rng = np.random.default_rng(0)
  centers = np.eye(8)[:4] * 5
  rows = np.concatenate([c + rng.normal(0, 0.1, (50, 8)) for c in centers])
  sweep = evaluate.k_sweep(rows, num_clusters=3, seed=0)
  assert sweep['best_k'] == 4
  assert set(sweep['silhouette']) == {'2', '3', '4', '5', '6'}
  assert sweep['sample'] == 200
  # A sample caps the rows scored; identical rows support no K at all.
  assert evaluate.k_sweep(rows, 3, seed=0, sample=60)['sample'] == 60
  same = evaluate.k_sweep(np.ones((30, 8)), 3, seed=0)
  assert same == {'best_k': None, 'silhouette': {}, 'sample': 30}


def test_the_results_table_names_the_k_the_embedding_supports():
  results = {'dataset': 'toy', 'num_examples': 200, 'seconds': 1.0,
             'num_clusters': 3, 'cluster_head': None, 'dec': None,
             'kmeans': None, 'k_sweep': {'best_k': 4, 'sample': 200,
                                         'silhouette': {'3': 0.5, '4': 0.8}}}
  table = evaluate.format_results_table(results)
  assert 'K the embedding supports: 4 (silhouette 0.800; at K=3: 0.500)' in (
      table)


def test_evaluate_is_numpy_only():
  import ast  # pylint: disable=g-import-not-at-top
  tree = ast.parse(pathlib.Path(evaluate.__file__).read_text())
  modules = {alias.name.split('.')[0] for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names} | {
                 node.module.split('.')[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
  assert not modules & {'jax', 'flax', 'optax'}
