"""The host-side passes over the whole dataset between training steps.

Each is a function of the model's outputs on every image and of the config:
DEC's centroids by k-means, its target distribution P, each image's nearest
neighbours, the self-labelling stage's pseudo-labels, and the metrics of an
evaluation during training. The Trainer runs them at the steps its plan
(:mod:`jcc.plan`) sets and keeps what they return.

Where several processes compute one, each on its own copy of the outputs,
process 0's result is the one every process keeps: float rounding may
differ between hosts.
"""

from __future__ import annotations

import time

from absl import logging
import jax
import ml_collections
import numpy as np

from jcc import distributed
from jcc import evaluate
from jcc import losses
from jcc import neighbors


def kmeans_centroids(embeddings: np.ndarray,
                     config: ml_collections.ConfigDict) -> np.ndarray:
  """DEC's centroids, (K, D): k-means on the embeddings of every image."""
  start = time.time()
  centroids, _ = evaluate.kmeans(embeddings, config.dataset.num_clusters,
                                 config.seed, config.train.kmeans_n_init)
  centroids = distributed.from_process_zero(centroids)
  logging.info('Centroids initialised by k-means (n_init=%d) on %d '
               'embeddings in %.1f s.', config.train.kmeans_n_init,
               len(embeddings), time.time() - start)
  return centroids


def target_rows(student_t: np.ndarray, num_examples: int,
                clustered: np.ndarray) -> np.ndarray:
  """DEC's target P, (N, K) float32: rows of the clustered examples from
  their q, zeros for instance-only ones (unused)."""
  p = np.asarray(losses.target_distribution(student_t), np.float32)
  if len(clustered) == num_examples:
    return p
  full = np.zeros((num_examples, p.shape[1]), np.float32)
  full[clustered] = p
  return full


def pseudo_labels(cluster_probs: np.ndarray, threshold: float,
                  num_examples: int, clustered: np.ndarray) -> np.ndarray:
  """The fixed pseudo-labels of the self-labelling stage, (N,) int32: the
  cluster head's argmax where it exceeds ``threshold``, else -1."""
  labels = np.full(num_examples, -1, np.int32)
  labels[clustered] = distributed.from_process_zero(
      evaluate.pseudo_labels(cluster_probs, threshold))
  return labels


def log_self_labeling_start(cluster_probs: np.ndarray,
                            labels: np.ndarray | None,
                            train: ml_collections.ConfigDict, steps: int,
                            fixed: bool) -> None:
  """Says what the self-labelling stage starts from: the share of images
  confident enough to be pseudo-labels and, with labels, how right."""
  confident = evaluate.confident_predictions(
      labels, cluster_probs, train.selflabel_threshold)
  logging.info(
      'Self-labelling: %d steps; pseudo-labels (the cluster head above '
      'train.selflabel_threshold): %s; %s.', steps,
      evaluate.describe_confident(confident),
      'fixed for the stage (train.selflabel_fixed)' if fixed else
      're-read at every step')


def nearest_neighbors(embeddings: np.ndarray, count: int,
                      mesh: jax.sharding.Mesh,
                      labels: np.ndarray | None) -> np.ndarray:
  """Each image's ``count`` nearest neighbours in the embedding, (N, count);
  with labels, the log says how many share their image's."""
  start = time.time()
  table = neighbors.nearest_neighbors(embeddings, count, mesh)
  agreement = '' if labels is None else (
      f'; {neighbors.neighbor_accuracy(table, labels):.3f} share their '
      "image's label")
  logging.info('Mined %d neighbours of each of %d images in %.1f s%s.',
               table.shape[1], len(embeddings), time.time() - start,
               agreement)
  return table


def evaluation_scalars(labels: np.ndarray, outputs: dict[str, np.ndarray],
                       centroids_set: bool) -> dict[str, float]:
  """ACC/NMI/ARI of the cluster head and, once its centroids are set, of
  DEC, as ``eval/{assignment}_{metric}`` scalars for the metric logs."""
  scalars = {}
  for name, probs in (('cluster_head', outputs['cluster_probs']),
                      ('dec', outputs['student_t'])):
    if name == 'dec' and not centroids_set:
      continue
    for metric, value in evaluate.clustering_metrics(
        labels, probs.argmax(1)).items():
      scalars[f'eval/{name}_{metric}'] = value
  return scalars
