"""The host-side passes over the whole dataset between training steps.

:class:`DatasetPasses` runs the model over every image of a run and computes
what the method needs from the outputs: DEC's centroids by k-means, its
target distribution P, each image's nearest neighbours, the self-labelling
stage's pseudo-labels, and the metrics of an evaluation during training. The
Trainer calls them at the steps its plan (:mod:`jcc.plan`) sets; each
``with_*`` pass returns the :class:`jcc.step.RunState` with its array
filled.

Each process runs the model over its own share of the images alone
(:meth:`DatasetPasses.own_outputs`). DEC's centroids and target come from
sums over processes (each cluster's statistics, :mod:`jcc.kmeans`, and
frequencies), the same on every process; the pseudo-labels and the
evaluations' assignments are a few numbers per image, put together from the
processes' shares (:meth:`DatasetPasses.final_assignments`). The
neighbours need every image's embedding on every process
(:meth:`DatasetPasses.with_neighbors`).
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging
import flax
import jax
import ml_collections
import numpy as np

from jcc import distributed
from jcc import evaluate
from jcc import inference
from jcc import kmeans
from jcc import losses
from jcc import neighbors
from jcc import parallel
from jcc import sources
from jcc import step as step_lib


@dataclasses.dataclass(frozen=True)
class Assignments:
  """The final evaluation's pass: on every process, each clustered image's
  ``cluster`` (the cluster head's argmax), ``confidence`` (its
  probability), ``dec_cluster`` (DEC's) and ``kmeans_cluster`` (k-means on
  the embeddings, :mod:`jcc.kmeans`), and the embeddings of the K sweep's
  sample (:func:`jcc.evaluate.sweep_sample`); ``own``: this process's
  outputs of its own clustered images, whose indices are ``rows`` (with one
  process, all of them in order)."""
  cluster: np.ndarray
  confidence: np.ndarray
  dec_cluster: np.ndarray
  kmeans_cluster: np.ndarray
  sweep_embeddings: np.ndarray
  own: dict[str, np.ndarray]
  rows: np.ndarray


class DatasetPasses:
  """The passes of one run over its dataset.

  The clustered images are all but the instance-only ones (STL-10's
  unlabelled split); ``labels`` are theirs, None without labels.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               dataset: sources.ImageDataset, mesh: jax.sharding.Mesh,
               predictor: inference.Predictor):
    self.config, self.dataset, self.mesh = config, dataset, mesh
    self.predictor = predictor
    self.cluster_indices = dataset.cluster_indices
    self._some_left_out = dataset.instance_only is not None
    self.labels = None if dataset.labels is None else (
        dataset.labels[self.cluster_indices])

  def outputs(self, state: step_lib.TrainState,
              images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Embeddings, cluster-head probabilities and q of each image (default:
    the clustered ones)."""
    if images is None:
      images = self.dataset.images
      if self._some_left_out:  # a copy: only where some are left out
        images = images[self.cluster_indices]
    return self.predictor({'params': state.params,
                           'batch_stats': state.batch_stats}, images)

  def own_outputs(self, state: step_lib.TrainState
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:meth:`outputs` of this process's share of the clustered images
    alone, and their indices among the clustered images."""
    images = self.dataset.images
    if self._some_left_out:
      images = images[self.cluster_indices]
    return self.predictor.own_rows({'params': state.params,
                                    'batch_stats': state.batch_stats}, images)

  def _assembled(self, own: np.ndarray, rows: np.ndarray,
                 chosen: np.ndarray | None = None) -> np.ndarray:
    """One value per clustered image (default) or per ``chosen`` one, on
    every process, from each process's values of its own ``rows``
    (:func:`jcc.distributed.rows_at`)."""
    if chosen is None:
      chosen = np.arange(len(self.cluster_indices))
    return distributed.rows_at(chosen, own, rows)

  def _replicated(self, array: np.ndarray) -> jax.Array:
    return parallel.to_global(array, parallel.shardings(self.mesh).replicated)

  def with_kmeans_centroids(self, run: step_lib.RunState
                            ) -> step_lib.RunState:
    """``run`` with DEC's centroids ← k-means on every embedding, each
    process embedding its own share (:mod:`jcc.kmeans`)."""
    config, start, state = self.config, time.time(), run.train
    outputs, rows = self.own_outputs(state)
    embeddings = outputs['embedding']
    if distributed.any_process(not np.all(np.isfinite(embeddings))):
      raise FloatingPointError(
          'The embeddings are not finite where k-means would set DEC\'s '
          f'centroids (step {int(state.step)}): the training diverged. '
          'Lower config.train.learning_rate.')
    centroids = kmeans.fit(
        embeddings, rows, len(self.cluster_indices),
        config.dataset.num_clusters, config.seed, config.train.kmeans_n_init,
        sum_over_processes=distributed.sum_over_processes)
    logging.info('Centroids initialised by k-means (n_init=%d) on %d '
                 'embeddings in %.1f s.', config.train.kmeans_n_init,
                 len(self.cluster_indices), time.time() - start)
    params = flax.core.unfreeze(state.params)
    params['clustering']['centroids'] = self._replicated(centroids)
    return run.replace(train=state.replace(params=params))

  def with_target(self, run: step_lib.RunState) -> step_lib.RunState:
    """``run`` (donated) with DEC's target P: the rows of the clustered
    examples from their q; those of instance-only ones stay 0 (unused).

    Each process computes its own share's rows, from the cluster
    frequencies summed over all processes, and sends them, an evaluation
    batch at a time, to the devices that hold them (the table is split by
    rows, :class:`jcc.step.RunState`): no process or device holds the whole
    table."""
    outputs, rows = self.own_outputs(run.train)
    q = outputs['student_t']
    frequency = distributed.sum_over_processes(q.sum(axis=0))
    p = np.asarray(losses.target_distribution(q, frequency=frequency),
                   np.float32)
    batch = self.predictor.batch_size
    return run.replace(target=parallel.set_rows(
        run.target, self.cluster_indices[rows].astype(np.int32), p,
        per_process=batch // jax.process_count(),
        num_chunks=-(-len(self.cluster_indices) // batch)))

  def with_pseudo_labels(self, run: step_lib.RunState,
                         steps: int) -> step_lib.RunState:
    """At the self-labelling stage's start: says what it starts from (the
    share of images confident enough to be pseudo-labels and, with labels,
    how right) and, where the run fixes them (train.selflabel_fixed),
    returns ``run`` with the stage's pseudo-labels, (N,) int32: the cluster
    head's argmax above the threshold, else -1."""
    fixed = run.pseudo_labels is not None
    outputs, rows = self.own_outputs(run.train)
    probs, threshold = (outputs['cluster_probs'],
                        self.config.train.selflabel_threshold)
    predictions = self._assembled(probs.argmax(1), rows)
    pseudo_labels = self._assembled(
        evaluate.pseudo_labels(probs, threshold), rows)
    logging.info(
        'Self-labelling: %d steps; pseudo-labels (the cluster head above '
        'train.selflabel_threshold): %s; %s.', steps,
        evaluate.describe_confident(evaluate.confidence(
            self.labels, predictions, pseudo_labels, probs.shape[1],
            threshold)),
        'fixed for the stage (train.selflabel_fixed)' if fixed else
        're-read at every step')
    if not fixed:
      return run
    labels = np.full(len(self.dataset), -1, np.int32)
    labels[self.cluster_indices] = pseudo_labels
    return run.replace(pseudo_labels=self._replicated(labels))

  def with_neighbors(self, run: step_lib.RunState) -> step_lib.RunState:
    """``run`` with each image's ``train.num_neighbors`` nearest neighbours
    in the embedding, (N, count), over all N; with labels, the log says how
    many share their image's."""
    start = time.time()
    embeddings = self.outputs(run.train, self.dataset.images)['embedding']
    table = neighbors.nearest_neighbors(
        embeddings, self.config.train.num_neighbors, self.mesh)
    agreement = '' if self._some_left_out or self.dataset.labels is None else (
        f'; {neighbors.neighbor_accuracy(table, self.dataset.labels):.3f} '
        "share their image's label")
    logging.info('Mined %d neighbours of each of %d images in %.1f s%s.',
                 table.shape[1], len(embeddings), time.time() - start,
                 agreement)
    return run.replace(neighbors=self._replicated(table))

  def final_assignments(self, state: step_lib.TrainState) -> Assignments:
    """The final evaluation's pass (:class:`Assignments`): each process
    embeds its own images, k-means sums statistics over the processes, and
    only a few numbers per image (and the K sweep's sample) are put
    together on every process."""
    config = self.config
    own, rows = self.own_outputs(state)
    total = len(self.cluster_indices)
    centroids = kmeans.fit(
        own['embedding'], rows, total, config.dataset.num_clusters,
        config.seed, sum_over_processes=distributed.sum_over_processes)
    probs = own['cluster_probs']
    return Assignments(
        cluster=self._assembled(probs.argmax(1).astype(np.int32), rows),
        confidence=self._assembled(probs.max(1), rows),
        dec_cluster=self._assembled(
            own['student_t'].argmax(1).astype(np.int32), rows),
        kmeans_cluster=self._assembled(
            kmeans.nearest(own['embedding'], centroids), rows),
        sweep_embeddings=self._assembled(
            own['embedding'], rows,
            evaluate.sweep_sample(total, config.seed)),
        own=own, rows=rows)

  def evaluation_scalars(self, state: step_lib.TrainState, step: int,
                         centroids_set: bool) -> dict[str, float]:
    """ACC/NMI/ARI of the cluster head and, once its centroids are set, of
    DEC, as ``eval/{assignment}_{metric}`` scalars (logged); empty without
    labels."""
    if self.labels is None:
      return {}
    (outputs, rows), scalars = self.own_outputs(state), {}
    for name, probs in (('cluster_head', outputs['cluster_probs']),
                        ('dec', outputs['student_t'])):
      if name == 'dec' and not centroids_set:
        continue
      for metric, value in evaluate.clustering_metrics(
          self.labels, self._assembled(probs.argmax(1), rows)).items():
        scalars[f'eval/{name}_{metric}'] = value
    logging.info('evaluation at step %d: %s', step, ' '.join(
        f'{k[5:]}={v:.3f}' for k, v in scalars.items()))
    return scalars
