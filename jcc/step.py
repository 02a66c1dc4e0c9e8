"""The train step: the run's state, its batches, the jitted step of each
phase, and :func:`build_run`, the one builder of a run.

Everything here runs inside compiled code or builds it; nothing does I/O.
The step takes the global batch of uint8 images, makes two augmented views on
the device, runs both through the model in one pass, and applies one
update of the weighted terms (:data:`TERMS`) by config.train's optimizer.
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
import numpy as np
import optax

from jcc import augment
from jcc import conv
from jcc import models
from jcc import objective
from jcc import optimizer
from jcc import parallel
from jcc import plan as plan_lib
from jcc.terms import (LOSS_WEIGHTS, NEIGHBOR_TERMS,
                       terms_after_warmup, uses_neighbors)


# Loss terms, in the order they are reported: one per weight in config.loss,
# then the self-labelling stage's one term.
TERMS = LOSS_WEIGHTS + ('self_labeling',)
# What a step checks for finiteness: each term, the total and the gradient,
# and the updated parameters (a finite gradient with a NaN learning rate).
# Bit i of TrainState.nonfinite_terms is entry i, so the list only grows at
# its end (a new term appended here), and the records in existing
# checkpoints keep their meaning.
FINITE_CHECKS = ('instance', 'cluster', 'entropy', 'reconstruction', 'kl',
                 'total or gradient', 'update', 'neighbor_consistency',
                 'neighbor_instance', 'self_labeling')


@flax.struct.dataclass
class Batch:
  """One step's examples as one pytree: per-example fields only, each with
  the global batch's B rows first and sharded on 'data'.

  ``images`` (B, H, W, C) uint8, at dataset.crop_from_size where that is
  set, else at dataset.image_size (the views are image_size), and
  ``indices`` (B,) int32, their rows in the dataset (which select their
  rows of :class:`RunState`'s arrays). The
  optional fields are None where a run has no use for them:
  ``in_clusters`` (B,) bool, False for the examples that train the instance
  objective alone (STL-10's unlabelled split); ``neighbor_images``, like
  ``images``, each image's neighbour (the neighbour terms).
  """
  images: jax.Array
  indices: jax.Array
  in_clusters: jax.Array | None = None
  neighbor_images: jax.Array | None = None


def batch_shardings(mesh: jax.sharding.Mesh, in_clusters: bool = False,
                    neighbors: bool = False) -> Batch:
  """The shardings of a :class:`Batch` with the given optional fields."""
  _, sharded = parallel.shardings(mesh)
  return Batch(images=sharded, indices=sharded,
               in_clusters=sharded if in_clusters else None,
               neighbor_images=sharded if neighbors else None)


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


@flax.struct.dataclass
class RunState:
  """What a run carries from one step to the next: the train state and the
  dataset-level arrays (placed by :func:`run_shardings`), checkpointed as
  one item.

  ``target`` (N', K) float32: DEC's target P, split by rows over the D
  devices, N' = N rounded up to a multiple of D
  (:func:`jcc.parallel.padded_rows`); rows of instance-only examples and
  past N are 0 and unused. ``neighbors`` (N, k) int32: each image's nearest
  neighbours, with a neighbour term (until they are mined, each image stands
  in for its own); else None. ``pseudo_labels`` (N,) int32: the
  self-labelling stage's fixed labels (-1: none), with
  train.selflabel_fixed; else None. The step reads each array's rows at
  the batch's ``indices``; the passes of :mod:`jcc.phases` fill them.
  ``momentum_params``: the momentum encoder's weights, with
  train.momentum_encoder (the step moves them towards ``train.params``);
  else None.
  """
  train: TrainState
  target: jax.Array
  neighbors: jax.Array | None = None
  pseudo_labels: jax.Array | None = None
  momentum_params: Any = None

  def checkpoint_tree(self) -> dict[str, Any]:
    """The state as the checkpoint stores it: a dict of the fields a run
    has ('state' is the train state).

    One orbax StandardSave item rather than a Composite of several: the
    state is restored whole, as one pytree, and these keys are the ones
    existing workdirs hold, so they resume as they are.
    """
    tree = {'state': self.train, 'target': self.target}
    for name in OPTIONAL_FIELDS:
      if getattr(self, name) is not None:
        tree[name] = getattr(self, name)
    return tree

  @classmethod
  def from_checkpoint_tree(cls, tree: dict[str, Any]) -> RunState:
    return cls(train=tree['state'], target=tree['target'],
               **{name: tree.get(name) for name in OPTIONAL_FIELDS})


# The fields of RunState that only some runs have.
OPTIONAL_FIELDS = ('neighbors', 'pseudo_labels', 'momentum_params')


def run_shardings(mesh: jax.sharding.Mesh) -> RunState:
  """Where a :class:`RunState` lives: P split by rows (the step reads a
  batch's rows where they are), the rest replicated."""
  replicated, rows = parallel.shardings(mesh)
  return RunState(train=replicated, target=rows, neighbors=replicated,
                  pseudo_labels=replicated, momentum_params=replicated)


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


def init_run_state(model: models.ClusteringModel,
                   tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict,
                   image_shape: tuple[int, int, int], mesh: jax.sharding.Mesh,
                   clustered: np.ndarray) -> RunState:
  """The run's initial state: the train state of ``config.seed``, a uniform
  P on the ``clustered`` rows ((N,) bool), and each image its own
  neighbour, no pseudo-label and a momentum encoder equal to the network,
  where the run has them."""
  replicated, _ = parallel.shardings(mesh)
  n, k = len(clustered), config.dataset.num_clusters
  rows = parallel.padded_rows(n, mesh)
  uniform = np.pad(clustered / np.float32(k), (0, rows - n))
  target = parallel.row_table(
      (rows, k), mesh, lambda part: np.repeat(uniform[part, None], k, 1))
  neighbors = np.repeat(np.arange(n, dtype=np.int32)[:, None],
                        config.train.num_neighbors, axis=1) if (
                            uses_neighbors(config)) else None
  pseudo_labels = np.full(n, -1, np.int32) if (
      config.train.selflabel_fixed) else None
  train = init_state(model, tx, config.seed, image_shape, mesh)
  # A copy, not the same arrays: the step donates the whole RunState.
  momentum_params = jax.jit(
      lambda params: jax.tree.map(jnp.copy, params),
      out_shardings=replicated)(train.params) if (
          config.train.get('momentum_encoder', 0.0)) else None
  return RunState(
      train=train, target=target, momentum_params=momentum_params,
      **{name: None if value is None else parallel.to_global(value,
                                                             replicated)
         for name, value in (('neighbors', neighbors),
                             ('pseudo_labels', pseudo_labels))})


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_train_step(model, tx, config, mesh, warmup_steps: int = 0,
                    instance_only: bool = False,
                    with_neighbors: bool | None = None,
                    self_labeling: bool = False, fixed_labels: bool = False,
                    compiler_options: dict[str, str] | None = None):
  """The jitted step: (run, batch) → (run, metrics).

  ``run`` is the :class:`RunState` (donated); ``batch`` a :class:`Batch`
  whose optional fields are those the flags ask for: ``in_clusters`` with
  ``instance_only``; ``neighbor_images`` with ``with_neighbors`` (default:
  a neighbour term has a weight, :func:`jcc.terms.uses_neighbors`; without
  neighbours the neighbour terms are left out, as in the warm-up, where
  there are none yet). The terms of :func:`jcc.terms.terms_after_warmup`
  count from step ``warmup_steps`` on. With ``self_labeling``: the
  self-labelling stage's step: the method's terms on two strong views
  (config.augment, then a Cutout of train.selflabel_cutout), plus
  train.selflabel_weight × :func:`jcc.objective.self_labeling_terms`, whose
  labels come from the plain images in the same pass, or, with
  ``fixed_labels``, from ``run.pseudo_labels``. With
  train.momentum_encoder m, the momentum encoder's projections of the views
  are the instance term's keys, and its weights become m·θ' + (1 − m)·θ
  after each update. ``compiler_options``: XLA's, for the step (default:
  :func:`jcc.conv.compiler_options`).
  """
  loss_config = config.loss
  aug_config = config.augment
  aug_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  size = config.dataset.image_size  # the views' side, whatever the batch's
  decode = bool(loss_config.reconstruction)
  momentum = config.train.get('momentum_encoder', 0.0)
  after_warmup = terms_after_warmup(config)
  if with_neighbors is None:
    with_neighbors = uses_neighbors(config)
  if not with_neighbors:
    loss_config = loss_config.copy_and_resolve_references()
    for name in NEIGHBOR_TERMS:
      loss_config[name] = 0.0

  def step_fn(run: RunState, batch: Batch):
    state, images, indices = run.train, batch.images, batch.indices
    joint_scale = (state.step >= warmup_steps).astype(jnp.float32)
    in_clusters = batch.in_clusters if instance_only else None
    key = jax.random.fold_in(aug_key, state.step)
    x = images.astype(jnp.float32) / 255.0
    cutout = config.train.selflabel_cutout if self_labeling else 0.0
    views = jnp.concatenate(
        augment.two_views(key, x, aug_config, cutout, size))
    inputs = views
    labels_from_images = self_labeling and not fixed_labels
    if labels_from_images:  # the plain images label the views, same pass
      inputs = jnp.concatenate([views, augment.resize_batch(x, size)])
    if with_neighbors:  # one view of each neighbour, in the same pass
      inputs = jnp.concatenate([views, augment.augment_batch(
          jax.random.fold_in(key, 2),
          batch.neighbor_images.astype(jnp.float32) / 255.0, aug_config,
          size=size)])
    p = run.target[indices]
    momentum_keys = None
    if momentum:  # the keys: the momentum encoder's projections of the views
      momentum_keys = jax.lax.stop_gradient(model.apply(
          {'params': run.momentum_params, 'batch_stats': state.batch_stats},
          views, train=True, decode=False,
          mutable=['batch_stats'])[0].projection)

    def loss_fn(params):
      outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, inputs,
          train=True, decode=decode, mutable=['batch_stats'])
      extra_terms = {}
      two = views.shape[0]
      if self_labeling:
        labelling = (outputs.cluster_probs[two:] if labels_from_images else
                     jax.nn.one_hot(run.pseudo_labels[indices],  # -1: zeros
                                    outputs.cluster_probs.shape[1]))
        extra_terms = objective.self_labeling_terms(
            labelling, outputs.cluster_probs[:two], config.train, in_clusters)
      neighbor = jax.tree.map(lambda x: x[two:], outputs) if (
          with_neighbors) else None
      outputs = jax.tree.map(lambda x: x[:two], outputs)
      terms = objective.compute_loss_terms(outputs, views, p, loss_config,
                                           in_clusters, neighbor,
                                           momentum_keys)
      total = sum(
          loss_config[name] * value *
          (joint_scale if name in after_warmup else 1)
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
    # good one and records where and which; the host stops at its next
    # check. (optax.apply_if_finite skips such updates too, but keeps
    # training past them and cannot say which term failed.)
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
    run = run.replace(train=new_state)
    if momentum:  # frozen with the state where the update was skipped
      run = run.replace(momentum_params=optax.incremental_update(
          new_state.params, run.momentum_params,
          jnp.where(ok, 1.0 - momentum, 0.0)))
    return run, dict(terms, total=total)

  replicated, _ = parallel.shardings(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(run_shardings(mesh), batch_shardings(
          mesh, instance_only, with_neighbors)),
      out_shardings=(run_shardings(mesh), replicated),
      donate_argnums=0,
      compiler_options=(conv.compiler_options() if compiler_options is None
                        else compiler_options))


class PhaseSteps(NamedTuple):
  """The jitted step of each phase (the same one where two phases agree)."""
  warmup: Callable
  joint: Callable  # with neighbour terms, it takes the neighbours' images
  selflabel: Callable | None  # None: the run has no self-labelling stage


def make_phase_steps(model, tx, config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh, plan: plan_lib.RunPlan,
                     instance_only: bool,
                     compiler_options: dict[str, str] | None = None
                     ) -> PhaseSteps:
  """The steps of a run's phases (:func:`make_train_step`)."""
  step = functools.partial(make_train_step, model, tx, config, mesh,
                           plan.warmup_steps, instance_only,
                           compiler_options=compiler_options)
  warmup = step(with_neighbors=False)
  joint = step(with_neighbors=True) if uses_neighbors(config) else warmup
  selflabel = step(
      with_neighbors=False, self_labeling=True,
      fixed_labels=config.train.selflabel_fixed,
  ) if plan.total_steps > plan.joint_end else None
  return PhaseSteps(warmup, joint, selflabel)


def compile_steps(steps: PhaseSteps, run: RunState,
                  image_shape: tuple[int, int, int], batch_size: int,
                  mesh: jax.sharding.Mesh, instance_only: bool) -> PhaseSteps:
  """``steps`` compiled for batches of ``batch_size`` images of
  ``image_shape``, each checked to fit in the devices' memory
  (:func:`jcc.parallel.fits_in_memory`)."""
  _, sharded = parallel.shardings(mesh)
  images = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape),
                                jnp.uint8, sharding=sharded)
  batch = Batch(images=images, indices=jax.ShapeDtypeStruct(
      (batch_size,), jnp.int32, sharding=sharded),
                in_clusters=jax.ShapeDtypeStruct(
                    (batch_size,), jnp.bool_, sharding=sharded)
                if instance_only else None)

  def compile_(step, batch):
    return parallel.fits_in_memory(step.lower(run, batch).compile(),
                                   batch_size, image_shape[0])

  # XLA compiles each phase's step on a thread of its own (it releases the
  # GIL), so a run on several cores waits for the slowest, not for their sum.
  wanted = {'warmup': (steps.warmup, batch)}
  if steps.joint is not steps.warmup:
    wanted['joint'] = (steps.joint, batch.replace(neighbor_images=images))
  if steps.selflabel:
    wanted['selflabel'] = (steps.selflabel, batch)
  with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
    futures = {name: pool.submit(compile_, *args)
               for name, args in wanted.items()}
    compiled = {name: future.result() for name, future in futures.items()}
  return PhaseSteps(compiled['warmup'],
                    compiled.get('joint', compiled['warmup']),
                    compiled.get('selflabel'))


class Run(NamedTuple):
  """A run's model, optimizer, initial state and phase steps."""
  model: models.ClusteringModel
  tx: optax.GradientTransformation
  state: RunState
  steps: PhaseSteps


def build_run(config: ml_collections.ConfigDict, channels: int,
              plan: plan_lib.RunPlan, mesh: jax.sharding.Mesh,
              clustered: np.ndarray, instance_only: bool = False,
              compiler_options: dict[str, str] | None = None) -> Run:
  """Everything a run's steps need, from its config: the one place that
  builds the model, the optimizer (:mod:`jcc.optimizer`), the initial
  :class:`RunState` for ``clustered`` ((N,) bool) and the jitted steps
  (compiled with XLA's ``compiler_options``, default jcc's); the workflows,
  the benchmarks and the tests all build a run here."""
  model = models.build_model(config, channels)
  tx = optimizer.make_optimizer(config.train, optimizer.learning_rate_schedule(
      config.train, plan.total_steps, plan.lr_warmup_steps))
  image_shape = (config.dataset.image_size,) * 2 + (channels,)
  return Run(model, tx,
             init_run_state(model, tx, config, image_shape, mesh, clustered),
             make_phase_steps(model, tx, config, mesh, plan, instance_only,
                              compiler_options))
