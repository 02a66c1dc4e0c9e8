"""Clustering metrics, assignments and result reports, on NumPy arrays.

No JAX here: the embeddings and probabilities come from
:mod:`jcc.inference`.
"""

from __future__ import annotations

import json
import os
import warnings

from absl import logging
import numpy as np
from scipy import optimize
from sklearn import cluster as sk_cluster
from sklearn import exceptions as sk_exceptions
from sklearn import metrics as sk_metrics

from jcc import files

ASSIGNMENTS = ('cluster_head', 'dec', 'kmeans')


def hungarian_match(
    labels: np.ndarray, assigned: np.ndarray, num_clusters: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The best one-to-one map of classes to clusters (Hungarian).

  Returns:
    (counts, classes, clusters): counts[c, k] images of class c in cluster k
    (num_clusters columns; default: the largest cluster index + 1), and the
    matched pairs, class ``classes[i]`` to cluster ``clusters[i]``, that
    maximise the images on them.
  """
  labels = np.asarray(labels, np.int64)
  assigned = np.asarray(assigned, np.int64)
  if num_clusters is None:
    num_clusters = int(assigned.max()) + 1
  counts = np.zeros((int(labels.max()) + 1, num_clusters), np.int64)
  np.add.at(counts, (labels, assigned), 1)
  classes, clusters = optimize.linear_sum_assignment(counts, maximize=True)
  return counts, classes, clusters


def cluster_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Accuracy after the best one-to-one map of clusters to labels (Hungarian)."""
  counts, classes, clusters = hungarian_match(labels, predictions)
  return float(counts[classes, clusters].sum() / len(labels))


def clustering_metrics(
    labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
  """ACC (Hungarian), NMI (arithmetic mean) and ARI of a clustering."""
  return {
      'acc': cluster_accuracy(labels, predictions),
      'nmi': float(sk_metrics.normalized_mutual_info_score(labels, predictions)),
      'ari': float(sk_metrics.adjusted_rand_score(labels, predictions)),
  }


def kmeans(
    embeddings: np.ndarray, num_clusters: int, seed: int, n_init: int = 10
) -> tuple[np.ndarray, np.ndarray]:
  """k-means (scikit-learn) on the rows: (centroids (K, D), labels (N,)).

  Fewer distinct rows than K (identical images embed identically) is said
  in one warning of jcc's own, in place of scikit-learn's.
  """
  rows = np.asarray(embeddings, np.float64)
  km = sk_cluster.KMeans(num_clusters, n_init=n_init, random_state=seed)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', sk_exceptions.ConvergenceWarning)
    labels = km.fit_predict(rows)
  for warning in caught:
    if not issubclass(warning.category, sk_exceptions.ConvergenceWarning):
      warnings.warn_explicit(warning.message, warning.category,
                             warning.filename, warning.lineno)
  if any(issubclass(w.category, sk_exceptions.ConvergenceWarning)
         for w in caught):
    distinct = len(np.unique(rows, axis=0))
    logging.warning(
        'k-means found %d distinct embeddings for K=%d clusters: the images '
        'are (nearly) identical, so %d clusters stay empty. Check the data, '
        'or lower config.dataset.num_clusters.', distinct, num_clusters,
        num_clusters - min(distinct, num_clusters))
  return km.cluster_centers_.astype(np.float32), labels


# The K sweep: k-means for K' = 2 .. 2K on a sample of this many embeddings.
K_SWEEP_SAMPLE = 2000


def sweep_sample(count: int, seed: int, sample: int = K_SWEEP_SAMPLE
                 ) -> np.ndarray:
  """The indices of the rows :func:`k_sweep` scores among ``count``: all of
  them up to ``sample``, else ``sample`` of them drawn from ``seed``, in
  index order."""
  if count <= sample:
    return np.arange(count)
  return np.sort(np.random.default_rng(seed).choice(
      count, sample, replace=False))


def k_sweep(embeddings: np.ndarray, num_clusters: int, seed: int,
            sample: int = K_SWEEP_SAMPLE) -> dict:
  """How many clusters the embedding supports: k-means for K' = 2 .. 2K on
  a random sample (:func:`sweep_sample`), each partition scored by its
  silhouette (Rousseeuw, J. Comput. Appl. Math. 20, 1987; scikit-learn's
  silhouette_score), the mean over points of (b - a) / max(a, b), with a
  the mean distance to the point's own cluster and b to the nearest other
  one.

  Returns ``{'best_k': K' of the highest silhouette, 'silhouette':
  {str(K'): score} (JSON's keys), 'sample': rows used}``; the embeddings
  are L2-normalised first (the contrastive objectives compare directions).
  Fewer than 4 distinct rows: ``best_k`` None, no scores. Given no more
  than ``sample`` rows (the sample already drawn), it scores them all.
  """
  rows = np.asarray(embeddings, np.float64)
  rows = rows[sweep_sample(len(rows), seed, sample)]
  rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
  scores = {}
  top = min(2 * num_clusters, len(np.unique(rows, axis=0)) - 1)
  for k in range(2, top + 1):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', sk_exceptions.ConvergenceWarning)
      labels = sk_cluster.KMeans(k, n_init=3, random_state=seed).fit_predict(
          rows)
    if len(np.unique(labels)) > 1:
      scores[str(k)] = round(float(sk_metrics.silhouette_score(rows, labels)),
                             4)
  best = max(scores, key=scores.get) if scores else None
  return {'best_k': best and int(best),
          'silhouette': scores, 'sample': len(rows)}


def assignment_metrics(labels: np.ndarray | None,
                       predictions: dict[str, np.ndarray]
                       ) -> dict[str, dict[str, float] | None]:
  """ACC/NMI/ARI of each assignment (:data:`ASSIGNMENTS`: each image's
  cluster); None entries when there are no labels."""
  if labels is None:
    return {name: None for name in predictions}
  return {name: clustering_metrics(labels, pred)
          for name, pred in predictions.items()}


def pseudo_labels(cluster_probs: np.ndarray, threshold: float) -> np.ndarray:
  """Each image's predicted cluster where its largest probability exceeds
  ``threshold``, else -1: the pseudo-labels of self-labelling."""
  return confident_clusters(cluster_probs.argmax(1), cluster_probs.max(1),
                            threshold)


def confident_clusters(clusters: np.ndarray, confidence: np.ndarray,
                       threshold: float) -> np.ndarray:
  """:func:`pseudo_labels` from each image's cluster and its probability."""
  return np.where(confidence > threshold, clusters, -1).astype(np.int32)


def confident_predictions(
    labels: np.ndarray | None, cluster_probs: np.ndarray, threshold: float
) -> dict[str, float | None]:
  """The cluster head's confident predictions, as self-labelling sees them.

  ``fraction``: the share of images whose largest probability exceeds
  ``threshold`` (those the self-labelling stage, train.selflabel_*, takes
  as pseudo-labels); ``acc``: how many of them are right, each cluster read
  as the class the Hungarian match of *all* the head's predictions gives it
  (None without labels or without a confident image).
  """
  return confidence(labels, cluster_probs.argmax(1),
                    pseudo_labels(cluster_probs, threshold),
                    cluster_probs.shape[1], threshold)


def confidence(labels: np.ndarray | None, predictions: np.ndarray,
               pseudo: np.ndarray, num_clusters: int, threshold: float
               ) -> dict[str, float | None]:
  """:func:`confident_predictions` from each image's predicted cluster and
  its pseudo-label (:func:`pseudo_labels`, -1 where not confident)."""
  confident = pseudo >= 0
  acc = None
  if labels is not None and confident.any():
    _, classes, clusters = hungarian_match(labels, predictions, num_clusters)
    class_of = np.full(num_clusters, -1)
    class_of[clusters] = classes
    acc = float(np.mean(class_of[predictions[confident]] ==
                        np.asarray(labels)[confident]))
  return {'threshold': float(threshold),
          'fraction': float(np.mean(confident)), 'acc': acc}


def describe_confident(confident: dict[str, float | None]) -> str:
  """One phrase for :func:`confident_predictions`' result."""
  right = ('' if confident['acc'] is None else
           f', ACC {confident["acc"]:.3f} on them')
  return (f'{100 * confident["fraction"]:.1f}% of images above '
          f'{confident["threshold"]:g}{right}')


def format_results_table(results: dict) -> str:
  """The results as a small fixed-width table."""
  lines = [
      f"{results['dataset']}: {results['num_examples']} images, "
      f"K={results['num_clusters']}, {results['seconds']:.0f} s",
      f'{"assignment":14s} {"ACC":>6s} {"NMI":>6s} {"ARI":>6s}',
  ]
  for name in ASSIGNMENTS:
    metrics = results.get(name)
    if metrics is None:
      lines.append(f'{name:14s} {"(no labels)":>20s}')
    else:
      lines.append(f'{name:14s} {metrics["acc"]:6.3f} {metrics["nmi"]:6.3f} '
                   f'{metrics["ari"]:6.3f}')
  if results.get('confident'):
    lines.append('head confident: ' + describe_confident(results['confident']))
  sweep = results.get('k_sweep')
  if sweep and sweep['best_k']:
    scores, k = sweep['silhouette'], results['num_clusters']
    at_k = scores.get(str(k))
    lines.append(f"K the embedding supports: {sweep['best_k']} (silhouette "
                 f"{scores[str(sweep['best_k'])]:.3f}" + (
                     f'; at K={k}: {at_k:.3f})' if at_k is not None else ')'))
  return '\n'.join(lines)


def write_results(workdir: str, results: dict) -> str:
  """Writes WORKDIR/results.json; returns its path."""
  path = os.path.join(workdir, 'results.json')
  with files.atomic_write(path) as f:
    json.dump(results, f, indent=2)
  return path
