"""Inference: the model's evaluation forward pass, batched over whole sets.

:func:`make_forward` is the jitted forward of one batch; :class:`Predictor`
runs it over every image of a set, in fixed-size batches sharded over the
devices. Training's evaluation, its passes over the dataset, ``--mode=
predict`` and :class:`jcc.Clusterer` all predict through it, so a saved
model's predictions are the evaluation's own, bit for bit on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jcc import conv
from jcc import models
from jcc import parallel
from jcc import pipeline
from jcc import trained_model


def make_forward(model, mesh, split: bool = False):
  """Jitted evaluation forward: variables, uint8 images → dict of outputs,
  whole on every device, or (``split``) split by rows as the images are."""

  def forward(variables, images):
    out = model.apply(variables, images.astype(jnp.float32) / 255.0,
                      train=False, decode=False)
    return {'embedding': out.embedding, 'cluster_probs': out.cluster_probs,
            'student_t': out.student_t}

  replicated, batch = parallel.shardings(mesh)
  return jax.jit(forward, in_shardings=(replicated, batch),
                 out_shardings=batch if split else replicated,
                 compiler_options=conv.compiler_options())


def each_batch(
    forward: Callable[[jax.Array], dict[str, jax.Array]],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    to_device: Callable[[np.ndarray], jax.Array] = jax.device_put,
) -> Iterator[dict[str, np.ndarray]]:
  """Runs ``forward`` over (images, mask) batches; each batch's outputs
  in turn, as NumPy.

  ``batches`` is :func:`jcc.pipeline.eval_batches`: fixed-size batches (one
  compiled shape) whose padding rows, False in ``mask``, are dropped.
  """
  for images, mask in batches:
    result = jax.device_get(forward(to_device(images)))
    yield {key: np.asarray(value)[mask] for key, value in result.items()}


def predict_batches(
    forward: Callable[[jax.Array], dict[str, jax.Array]],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    to_device: Callable[[np.ndarray], jax.Array] = jax.device_put,
) -> dict[str, np.ndarray]:
  """:func:`each_batch`'s outputs, concatenated over the batches."""
  return concatenate(each_batch(forward, batches, to_device))


def concatenate(results: Iterable[dict[str, np.ndarray]]
                ) -> dict[str, np.ndarray]:
  """Batches' outputs as one dict of arrays, one row per image."""
  outputs: dict[str, list[np.ndarray]] = {}
  for result in results:
    for key, value in result.items():
      outputs.setdefault(key, []).append(value)
  return {key: np.concatenate(value) for key, value in outputs.items()}


class Predictor:
  """The model's evaluation forward over whole sets of uint8 images.

  ``predictor(variables, images)`` → ``{'embedding': (N, D), 'cluster_probs':
  (N, K), 'student_t': (N, K)}`` as NumPy, in batches of ``batch_size``
  (rounded up to a multiple of the devices) sharded over ``mesh``.
  """

  def __init__(self, model: models.ClusteringModel, mesh: jax.sharding.Mesh,
               batch_size: int):
    self._forward = make_forward(model, mesh)
    self._forward_split = make_forward(model, mesh, split=True)
    self._replicated, self._batch_sharding = parallel.shardings(mesh)
    self.batch_size = parallel.padded_rows(max(batch_size, mesh.size), mesh)

  def __call__(self, variables: dict, images: np.ndarray
               ) -> dict[str, np.ndarray]:
    return concatenate(self.batches(variables, images))

  def batches(self, variables: dict, images: np.ndarray
              ) -> Iterator[dict[str, np.ndarray]]:
    """The outputs of each batch of ``images`` in turn, so that memory
    holds one batch's, not the whole set's (every process takes part in
    each batch)."""
    variables = self._on_devices(variables)
    return each_batch(
        lambda batch: self._forward(variables, batch),
        pipeline.eval_batches(images, self.batch_size, jax.process_index(),
                              jax.process_count()), self._to_device)

  def own_rows(self, variables: dict, images: np.ndarray
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The outputs of this process's rows of ``images`` alone (the rows it
    reads, :func:`jcc.pipeline.process_rows`), and those rows' indices: no
    process receives another's outputs. One process: all rows, in order."""
    variables = self._on_devices(variables)
    share = self.batch_size // jax.process_count()
    first = jax.process_index() * share
    outputs = []
    for batch, mask in pipeline.eval_batches(
        images, self.batch_size, jax.process_index(), jax.process_count()):
      result = self._forward_split(variables, self._to_device(batch))
      outputs.append({key: _own_rows(value)[mask[first:first + share]]
                      for key, value in result.items()})
    return concatenate(outputs), pipeline.process_rows(
        len(images), self.batch_size, jax.process_index(),
        jax.process_count())

  def _on_devices(self, variables: dict) -> dict:
    return jax.tree.map(
        lambda a: a if isinstance(a, jax.Array) else parallel.to_global(
            np.asarray(a), self._replicated), variables)

  def _to_device(self, batch: np.ndarray) -> jax.Array:
    if jax.process_count() == 1:
      return parallel.to_global(batch, self._batch_sharding)
    # Each host reads and sends only its rows.
    return parallel.from_process_local(self._batch_sharding, batch)[0]


def _own_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of an array split by rows over the devices."""
  shards = sorted(array.addressable_shards,
                  key=lambda shard: shard.index[0].start or 0)
  return np.concatenate([np.asarray(shard.data) for shard in shards])


def saved_model_predictor(model: trained_model.TrainedModel,
                          mesh: jax.sharding.Mesh | None = None,
                          batch_size: int | None = None) -> Predictor:
  """A :class:`Predictor` of a saved model on ``mesh`` (default: every
  device JAX sees), in batches of ``batch_size`` (default: its config's
  train.eval_batch_size)."""
  return Predictor(models.build_model(model.config, model.channels),
                   mesh or parallel.make_mesh(),
                   batch_size or model.config.train.eval_batch_size)
