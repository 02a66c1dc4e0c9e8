"""The train step: state, loss terms, the jitted step and forward pass, the LR.

Everything here runs inside compiled code or builds it; nothing does I/O.
The step takes the global batch of uint8 images, makes two augmented views on
the device, runs both through the model in one pass, and applies one Adam
update of the weighted terms (:data:`TERMS`).
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jcc import augment
from jcc import conv
from jcc import losses
from jcc import models
from jcc import parallel
from jcc.terms import (JOINT_TERMS, LOSS_WEIGHTS, NEIGHBOR_TERMS,
                       uses_neighbors)


# Loss terms, in the order they are reported: one per weight in config.loss,
# then the self-labelling stage's one term.
TERMS = LOSS_WEIGHTS + ('self_labeling',)
# What a step checks for finiteness: each term, the total and the gradient,
# and the updated parameters (a finite gradient with a NaN learning rate).
# Bit i of TrainState.nonfinite_terms is entry i: later terms go at the end,
# so that the records of existing checkpoints keep their meaning.
FINITE_CHECKS = TERMS[:5] + ('total or gradient', 'update') + TERMS[5:]


@flax.struct.dataclass
class Batch:
  """One step's inputs besides the state and P, as one pytree.

  ``images`` (B, H, W, C) uint8 and ``indices`` (B,) int32, their rows in
  the dataset, are the global batch, sharded on 'data'. ``joint_scale`` ()
  float32 is 0 in the warm-up and 1 after: it switches the terms of
  JOINT_TERMS. The optional fields are None where a run has no use for
  them: ``cluster_mask`` (N,) bool, False for the examples that train the
  instance objective alone; ``neighbor_images``, sharded like ``images``,
  each image's neighbour; ``pseudo_labels`` (N,) int32, the self-labelling
  stage's fixed labels (-1: none). (N,) fields are replicated.
  """
  images: jax.Array
  indices: jax.Array
  joint_scale: jax.Array
  cluster_mask: jax.Array | None = None
  neighbor_images: jax.Array | None = None
  pseudo_labels: jax.Array | None = None


def batch_shardings(mesh: jax.sharding.Mesh, cluster_mask: bool = False,
                    neighbors: bool = False,
                    pseudo_labels: bool = False) -> Batch:
  """The shardings of a :class:`Batch` with the given optional fields: the
  per-image fields on 'data', the rest replicated."""
  replicated, sharded = parallel.shardings(mesh)
  return Batch(images=sharded, indices=sharded, joint_scale=replicated,
               cluster_mask=replicated if cluster_mask else None,
               neighbor_images=sharded if neighbors else None,
               pseudo_labels=replicated if pseudo_labels else None)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # First step whose loss or gradient was not finite (-1: none yet), and
  # which of FINITE_CHECKS failed there, bit i for entry i (read it with
  # nonfinite_names). From that step on the update is skipped, so the state
  # stays the last good one.
  nonfinite_step: jax.Array
  nonfinite_terms: jax.Array


def nonfinite_names(nonfinite_terms: int) -> list[str]:
  """The FINITE_CHECKS entries that TrainState.nonfinite_terms marks."""
  return [name for i, name in enumerate(FINITE_CHECKS)
          if int(nonfinite_terms) >> i & 1]


def check_finite(state: TrainState) -> None:
  """Raises FloatingPointError if a step met a non-finite loss or update
  (the state then is the last good one), naming the step and the terms."""
  bad_step = int(state.nonfinite_step)
  if bad_step < 0:
    return
  names = nonfinite_names(state.nonfinite_terms)
  raise FloatingPointError(
      f'Non-finite loss or update at step {bad_step}: {", ".join(names)}. '
      'Training stopped; the checkpoints in the workdir are from before it. '
      'Lower config.train.learning_rate or check the data.')


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """config.train.compute_dtype as a dtype (float32 or bfloat16)."""
  return jnp.dtype(config.train.get('compute_dtype', 'float32'))


def learning_rate_schedule(train_config: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """config.train's learning rate as a function of the step.

  'constant': CC's recipe. 'cosine': lr·½(1 + cos(π·t/T)) over the T steps of
  the whole run, ending at 0.
  """
  if train_config.get('lr_schedule', 'constant') == 'cosine':
    return optax.cosine_decay_schedule(train_config.learning_rate,
                                       max(total_steps, 1))
  return optax.constant_schedule(train_config.learning_rate)


def create_train_state(
    model: models.ClusteringModel,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, int, int],
) -> TrainState:
  variables = model.init(key, jnp.zeros((2,) + image_shape), train=False)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(variables['params']),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      nonfinite_terms=jnp.zeros((), jnp.int32))


def init_state(model: models.ClusteringModel, tx: optax.GradientTransformation,
               seed: int, image_shape: tuple[int, int, int],
               mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state of ``config.seed``, replicated over ``mesh``."""
  replicated, _ = parallel.shardings(mesh)
  key = jax.random.fold_in(jax.random.key(seed), 0)
  return jax.jit(lambda key: create_train_state(model, tx, key, image_shape),
                 out_shardings=replicated,
                 compiler_options=conv.compiler_options())(key)


def compute_loss_terms(
    outputs: models.ModelOutputs,
    views: jax.Array,
    target: jax.Array,
    loss_config: ml_collections.ConfigDict,
    in_clusters: jax.Array | None = None,
    neighbor: models.ModelOutputs | None = None,
) -> dict[str, jax.Array]:
  """The active (non-zero weight) terms, unweighted, for a 2B batch of views.

  Rows [0, B) of ``outputs`` are view a, rows [B, 2B) view b of the same
  images; ``target`` is DEC's P for the B images. ``in_clusters`` (B,) bool
  limits the cluster, entropy and KL terms to the rows where it is True
  (the others train the instance objective alone); None: all rows.
  ``neighbor``: the outputs of a view of each image's neighbour (B rows),
  for the neighbour terms (on every row).
  """
  half = views.shape[0] // 2
  a = jax.tree.map(lambda x: x[:half], outputs)
  b = jax.tree.map(lambda x: x[half:], outputs)
  probs_a, probs_b, kl_scale = a.cluster_probs, b.cluster_probs, 1.0
  if in_clusters is not None:
    # A zero row adds nothing to the column dot products, the marginal's
    # mass or the KL sum; the KL mean is rescaled to the clustered rows.
    keep = in_clusters.astype(jnp.float32)[:, None]
    probs_a, probs_b, target = probs_a * keep, probs_b * keep, target * keep
    kl_scale = half / jnp.maximum(jnp.sum(keep), 1.0)
  terms = {}
  if loss_config.instance:
    terms['instance'] = losses.instance_contrastive_loss(
        a.projection, b.projection, loss_config.instance_temperature,
        normalized=True)
  if loss_config.cluster:
    terms['cluster'] = losses.cluster_contrastive_loss(
        probs_a, probs_b, loss_config.cluster_temperature)
  if loss_config.entropy:
    terms['entropy'] = (losses.cluster_entropy(probs_a) +
                        losses.cluster_entropy(probs_b))
  if loss_config.reconstruction:
    terms['reconstruction'] = losses.reconstruction_loss(
        views, outputs.reconstruction)
  if loss_config.kl:
    terms['kl'] = 0.5 * kl_scale * (
        losses.kl_clustering_loss(target, a.student_t) +
        losses.kl_clustering_loss(target, b.student_t))
  if loss_config.neighbor_consistency:
    terms['neighbor_consistency'] = 0.5 * (
        losses.neighbor_consistency_loss(a.cluster_probs,
                                         neighbor.cluster_probs) +
        losses.neighbor_consistency_loss(b.cluster_probs,
                                         neighbor.cluster_probs))
  if loss_config.neighbor_instance:
    terms['neighbor_instance'] = 0.5 * (
        losses.neighbor_instance_loss(
            a.projection, neighbor.projection,
            loss_config.instance_temperature, normalized=True) +
        losses.neighbor_instance_loss(
            b.projection, neighbor.projection,
            loss_config.instance_temperature, normalized=True))
  return terms


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def self_labeling_terms(labelling_probs: jax.Array, view_probs: jax.Array,
                        train_config: ml_collections.ConfigDict,
                        in_clusters: jax.Array | None = None
                        ) -> dict[str, jax.Array]:
  """The self-labelling term of B images: ``labelling_probs`` (B, K) give
  the pseudo-labels (the plain images' predictions, or one-hot fixed
  labels), ``view_probs`` (2B, K) are the predictions on the two strong
  views (view a, then view b), each trained towards those labels.

  Rows where ``in_clusters`` is False give no label (they are not clustered).
  """
  num_images = labelling_probs.shape[0]
  if in_clusters is not None:
    labelling_probs = labelling_probs * in_clusters.astype(
        labelling_probs.dtype)[:, None]
  threshold = train_config.selflabel_threshold
  balance = train_config.selflabel_balance
  return {'self_labeling': 0.5 * sum(
      losses.self_labeling_loss(labelling_probs, strong, threshold, balance)
      for strong in (view_probs[:num_images], view_probs[num_images:]))}


def make_train_step(model, tx, config, mesh, instance_only: bool = False,
                    with_neighbors: bool | None = None,
                    self_labeling: bool = False, fixed_labels: bool = False,
                    compiler_options: dict[str, str] | None = None):
  """The jitted step: (state, target, batch) → (state, metrics).

  The state and DEC's target P ``target`` (N, K) are replicated; ``batch``
  is a :class:`Batch` whose optional fields are those the flags ask for:
  ``cluster_mask`` with ``instance_only``; ``neighbor_images`` with
  ``with_neighbors`` (default: a neighbour term has a weight,
  :func:`jcc.terms.uses_neighbors`; without neighbours the neighbour terms
  are left out, as in the warm-up, where there are none yet);
  ``pseudo_labels`` with ``fixed_labels``. With ``self_labeling``: the
  self-labelling stage's step: the method's terms on two strong views
  (config.augment, then a Cutout of train.selflabel_cutout), plus
  train.selflabel_weight × :func:`self_labeling_terms`, whose labels come
  from the plain images in the same pass, or, with ``fixed_labels``, from
  ``batch.pseudo_labels``. ``compiler_options``: XLA's, for the step
  (default: :func:`jcc.conv.compiler_options`).
  """
  loss_config = config.loss
  aug_config = config.augment
  aug_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  decode = bool(loss_config.reconstruction)
  if with_neighbors is None:
    with_neighbors = uses_neighbors(config)
  if not with_neighbors:
    loss_config = loss_config.copy_and_resolve_references()
    for name in NEIGHBOR_TERMS:
      loss_config[name] = 0.0

  def step_fn(state, target, batch: Batch):
    images, indices, joint_scale = (batch.images, batch.indices,
                                    batch.joint_scale)
    in_clusters = batch.cluster_mask[indices] if instance_only else None
    neighbor_images, pseudo_labels = batch.neighbor_images, batch.pseudo_labels
    key = jax.random.fold_in(aug_key, state.step)
    x = images.astype(jnp.float32) / 255.0
    cutout = config.train.selflabel_cutout if self_labeling else 0.0
    views = jnp.concatenate(augment.two_views(key, x, aug_config, cutout))
    inputs = views
    labels_from_images = self_labeling and not fixed_labels
    if labels_from_images:  # the plain images label the views, same pass
      inputs = jnp.concatenate([views, x])
    if with_neighbors:  # one view of each neighbour, in the same pass
      inputs = jnp.concatenate([views, augment.augment_batch(
          jax.random.fold_in(key, 2),
          neighbor_images.astype(jnp.float32) / 255.0, aug_config)])
    p = target[indices]

    def loss_fn(params):
      outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, inputs,
          train=True, decode=decode, mutable=['batch_stats'])
      extra_terms = {}
      two = views.shape[0]
      if self_labeling:
        labelling = (outputs.cluster_probs[two:] if labels_from_images else
                     jax.nn.one_hot(pseudo_labels[indices],  # -1: zeros
                                    outputs.cluster_probs.shape[1]))
        extra_terms = self_labeling_terms(
            labelling, outputs.cluster_probs[:two], config.train, in_clusters)
      neighbor = jax.tree.map(lambda x: x[two:], outputs) if (
          with_neighbors) else None
      outputs = jax.tree.map(lambda x: x[:two], outputs)
      terms = compute_loss_terms(outputs, views, p, loss_config, in_clusters,
                                 neighbor)
      total = sum(
          loss_config[name] * value *
          (joint_scale if name in JOINT_TERMS else 1)
          for name, value in terms.items())
      if self_labeling:
        total += config.train.selflabel_weight * extra_terms['self_labeling']
      return total, ({**terms, **extra_terms}, updates['batch_stats'])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (terms, batch_stats)), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updated = state.replace(
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state)
    # A non-finite loss, gradient or update freezes the state at the last
    # good one and records where and which; the host stops at its next check.
    finite = {name: jnp.isfinite(terms[name]) if name in terms
              else jnp.bool_(True) for name in TERMS}
    finite['total or gradient'] = jnp.isfinite(total) & _all_finite(grads)
    finite['update'] = _all_finite(updated.params)
    mask = sum(jnp.logical_not(finite[name]).astype(jnp.int32) << i
               for i, name in enumerate(FINITE_CHECKS))
    ok = (mask == 0) & (state.nonfinite_step < 0)
    new_state = jax.tree.map(functools.partial(jnp.where, ok), updated, state)
    first_bad = (state.nonfinite_step < 0) & (mask != 0)
    new_state = new_state.replace(
        step=state.step + 1,
        nonfinite_step=jnp.where(first_bad, state.step + 1,
                                 state.nonfinite_step),
        nonfinite_terms=jnp.where(first_bad, mask, state.nonfinite_terms))
    return new_state, dict(terms, total=total)

  replicated, _ = parallel.shardings(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(replicated, replicated, batch_shardings(
          mesh, instance_only, with_neighbors, fixed_labels)),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
      compiler_options=(conv.compiler_options() if compiler_options is None
                        else compiler_options))


class PhaseSteps(NamedTuple):
  """The jitted step of each phase (the same one where two phases agree)."""
  warmup: Callable
  joint: Callable  # with neighbour terms, it takes the neighbours' images
  selflabel: Callable | None  # None: the run has no self-labelling stage


def make_phase_steps(model, tx, config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh, instance_only: bool,
                     self_labeling: bool) -> PhaseSteps:
  """The steps of a run's phases (:func:`make_train_step`)."""
  warmup = make_train_step(model, tx, config, mesh, instance_only,
                           with_neighbors=False)
  joint = make_train_step(model, tx, config, mesh, instance_only,
                          with_neighbors=True) if uses_neighbors(
                              config) else warmup
  selflabel = make_train_step(
      model, tx, config, mesh, instance_only, with_neighbors=False,
      self_labeling=True, fixed_labels=config.train.selflabel_fixed
  ) if self_labeling else None
  return PhaseSteps(warmup, joint, selflabel)


def compile_steps(steps: PhaseSteps, state: TrainState, target: jax.Array,
                  image_shape: tuple[int, int, int], batch_size: int,
                  mesh: jax.sharding.Mesh, joint_scale: jax.Array,
                  cluster_mask: jax.Array | None,
                  pseudo_labels: jax.Array | None) -> PhaseSteps:
  """``steps`` compiled for batches of ``batch_size`` images of
  ``image_shape``, each checked to fit in the devices' memory
  (:func:`jcc.parallel.fits_in_memory`)."""
  _, sharded = parallel.shardings(mesh)
  images = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape),
                                jnp.uint8, sharding=sharded)
  batch = Batch(images=images, indices=jax.ShapeDtypeStruct(
      (batch_size,), jnp.int32, sharding=sharded), joint_scale=joint_scale,
                cluster_mask=cluster_mask)

  def compile_(step, batch):
    return parallel.fits_in_memory(step.lower(state, target, batch).compile(),
                                   batch_size, image_shape[0])

  # XLA compiles each phase's step on a thread of its own (it releases the
  # GIL), so a run on several cores waits for the slowest, not for their sum.
  wanted = {'warmup': (steps.warmup, batch)}
  if steps.joint is not steps.warmup:
    wanted['joint'] = (steps.joint, batch.replace(neighbor_images=images))
  if steps.selflabel:
    wanted['selflabel'] = (steps.selflabel,
                           batch.replace(pseudo_labels=pseudo_labels))
  with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
    futures = {name: pool.submit(compile_, *args)
               for name, args in wanted.items()}
    compiled = {name: future.result() for name, future in futures.items()}
  return PhaseSteps(compiled['warmup'],
                    compiled.get('joint', compiled['warmup']),
                    compiled.get('selflabel'))


def make_forward(model, mesh):
  """Jitted evaluation forward: variables, uint8 images → dict of outputs."""

  def forward(variables, images):
    out = model.apply(variables, images.astype(jnp.float32) / 255.0,
                      train=False, decode=False)
    return {'embedding': out.embedding, 'cluster_probs': out.cluster_probs,
            'student_t': out.student_t}

  replicated, batch = parallel.shardings(mesh)
  return jax.jit(forward, in_shardings=(replicated, batch),
                 out_shardings=replicated,
                 compiler_options=conv.compiler_options())
