"""Training: state, the jitted train step, the phases, checkpoints, progress.

``train_and_evaluate(config, workdir)`` runs the whole method:

1. warm-up (``config.train.warmup_epochs``): every weighted term but the KL;
2. at the end of the warm-up, the DEC centroids are initialised by k-means on
   the embeddings of the whole training set, and P is computed from them;
3. joint training of all terms, with P recomputed over the whole training set
   every ``config.train.target_update_interval`` steps.

Then it evaluates three assignments (cluster head, DEC, k-means on the
embeddings), writes ``WORKDIR/results.json`` and prints a table. Checkpoints
(orbax) go to ``WORKDIR/checkpoints``; a restart with the same workdir resumes
from the latest one, and the batches and augmentation keys of a step depend
only on (seed, step).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from jcc import augment
from jcc import data
from jcc import evaluate
from jcc import losses
from jcc import metric_writer
from jcc import models
from jcc import report
from jcc.errors import CheckpointError, ConfigError, DataError

# Loss terms, in the order they are reported.
TERMS = ('instance', 'cluster', 'entropy', 'reconstruction', 'kl')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # First step whose loss or gradient was not finite (-1: none yet), and a
  # bit per TERMS entry (bit len(TERMS): the total or the gradient) saying
  # which. From that step on the update is skipped, so the state stays the
  # last good one.
  nonfinite_step: jax.Array
  nonfinite_terms: jax.Array


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all hosts).

  The batch is split on its axis 'data'; parameters are replicated. Under
  ``jax.jit`` this has pmap's semantics on today's API: BatchNorm statistics
  and the contrastive negatives come from the global batch.
  """
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(
      np.asarray(devices), ('data',), axis_types=(AxisType.Auto,))


def to_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global jax.Array from a host array that every process holds whole.

  Each process fills only its addressable shards, so this works on one host
  and on many (where a plain ``device_put`` would need all devices local).
  """
  return jax.make_array_from_callback(
      array.shape, sharding, lambda index: array[index])


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Starts jax.distributed for multi-host runs, once, before devices are used.

  Multi-host when ``config.multihost`` is True, or when the environment names
  a coordinator (JAX_COORDINATOR_ADDRESS; on TPU pods and SLURM JAX finds
  the rest itself).
  """
  wanted = config.get('multihost', False) or os.environ.get(
      'JAX_COORDINATOR_ADDRESS')
  if wanted and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """config.train.compute_dtype as a dtype (float32 or bfloat16)."""
  name = config.train.get('compute_dtype', 'float32')
  if name not in ('float32', 'bfloat16'):
    raise ConfigError(
        f"config.train.compute_dtype={name!r}: use 'float32' or 'bfloat16'.")
  return jnp.dtype(name)


LR_SCHEDULES = ('constant', 'cosine')


def learning_rate_schedule(train_config: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """config.train's learning rate as a function of the step.

  'constant': CC's recipe. 'cosine': lr·½(1 + cos(π·t/T)) over the T steps of
  the whole run, ending at 0.
  """
  name = train_config.get('lr_schedule', 'constant')
  if name == 'constant':
    return optax.constant_schedule(train_config.learning_rate)
  if name == 'cosine':
    return optax.cosine_decay_schedule(train_config.learning_rate,
                                       max(total_steps, 1))
  raise ConfigError(f'config.train.lr_schedule={name!r}: use one of '
                    f'{", ".join(map(repr, LR_SCHEDULES))}.')


def check_config(config: ml_collections.ConfigDict, num_examples: int,
                 num_devices: int) -> None:
  """Raises ConfigError for settings that cannot train."""
  k = config.dataset.num_clusters
  batch = config.train.batch_size
  compute_dtype(config)
  learning_rate_schedule(config.train, 1)
  if k < 2:
    raise ConfigError(f'config.dataset.num_clusters={k}: need at least 2.')
  if k > num_examples:
    raise ConfigError(
        f'config.dataset.num_clusters={k} exceeds the {num_examples} examples.')
  if batch > num_examples:
    raise ConfigError(
        f'config.train.batch_size={batch} exceeds the {num_examples} examples;'
        ' lower it.')
  if batch < k:
    raise ConfigError(
        f'config.train.batch_size={batch} is smaller than '
        f'config.dataset.num_clusters={k}: a batch must be able to hold '
        'every cluster. Raise the batch size.')
  if batch % num_devices:
    raise ConfigError(
        f'config.train.batch_size={batch} does not divide over the '
        f'{num_devices} devices; use a multiple of {num_devices}.')
  for field in ('log_every_steps', 'checkpoint_every_steps'):
    if config.train[field] < 1:
      raise ConfigError(
          f'config.train.{field}={config.train[field]}: must be >= 1.')
  if config.train.eval_every_steps < 0:
    raise ConfigError(
        f'config.train.eval_every_steps={config.train.eval_every_steps}: '
        'must be >= 0 (0: evaluate only at the end).')
  negative = [t for t in TERMS if config.loss[t] < 0]
  if negative:
    raise ConfigError(
        f'config.loss.{negative[0]}={config.loss[negative[0]]}: loss weights '
        'must be >= 0 (0 removes the term).')


SIGNATURE_FILE = 'model.json'


def model_signature(config: ml_collections.ConfigDict, channels: int) -> dict:
  """What a checkpoint's shapes depend on; must match to restore it."""
  return {
      'backbone': config.model.backbone,
      'num_clusters': config.dataset.num_clusters,
      'image_size': config.dataset.image_size,
      'channels': channels,
      'convnet_widths': list(config.model.convnet_widths),
      'head_hidden': config.model.head_hidden,
      'projection_dim': config.model.projection_dim,
      'decoder_width': config.model.decoder_width,
  }


def write_model_signature(workdir: str, signature: dict) -> None:
  path = os.path.join(workdir, SIGNATURE_FILE)
  if not os.path.exists(path):
    with open(path, 'w') as f:
      json.dump(signature, f, indent=2)


def check_model_signature(workdir: str, signature: dict) -> None:
  """Raises if WORKDIR holds checkpoints of a differently shaped model."""
  path = os.path.join(workdir, SIGNATURE_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  differ = [f'{key}: {saved.get(key)!r} there, {value!r} now'
            for key, value in signature.items() if saved.get(key) != value]
  if differ:
    raise CheckpointError(
        f'{workdir} holds a model of another shape ({"; ".join(differ)}). '
        'Use the config it was trained with, or another --workdir.')


def check_workdir(workdir: str) -> None:
  """Creates WORKDIR if needed; raises if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(
        f'--workdir={workdir} cannot be written ({e.strerror or e}). Choose a '
        'writable directory.') from e


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


def compute_loss_terms(
    outputs: models.ModelOutputs,
    views: jax.Array,
    target: jax.Array,
    loss_config: ml_collections.ConfigDict,
    clustered: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """The active (non-zero weight) terms, unweighted, for a 2B batch of views.

  Rows [0, B) of ``outputs`` are view a, rows [B, 2B) view b of the same
  images; ``target`` is DEC's P for the B images. ``clustered`` (B,) bool
  limits the cluster, entropy and KL terms to the rows where it is True
  (the others train the instance objective alone); None: all rows.
  """
  half = views.shape[0] // 2
  a = jax.tree.map(lambda x: x[:half], outputs)
  b = jax.tree.map(lambda x: x[half:], outputs)
  probs_a, probs_b, kl_scale = a.cluster_probs, b.cluster_probs, 1.0
  if clustered is not None:
    # A zero row adds nothing to the column dot products, the marginal's
    # mass or the KL sum; the KL mean is rescaled to the clustered rows.
    keep = clustered.astype(jnp.float32)[:, None]
    probs_a, probs_b, target = probs_a * keep, probs_b * keep, target * keep
    kl_scale = half / jnp.maximum(jnp.sum(keep), 1.0)
  terms = {}
  if loss_config.instance:
    terms['instance'] = losses.instance_contrastive_loss(
        a.projection, b.projection, loss_config.instance_temperature)
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
  return terms


def make_train_step(model, tx, config, mesh, instance_only: bool = False):
  """The jitted step: (state, target, images, indices, kl_scale) → (state, metrics).

  ``images`` (uint8) and ``indices`` (their rows in the dataset, to look up
  P in ``target``) are the global batch, sharded over 'data'; the state and
  ``target`` are replicated. ``kl_scale`` is 0 in the warm-up, 1 after.
  With ``instance_only``, rows of ``target`` that sum to 0 mark examples
  that train the instance objective alone.
  """
  loss_config = config.loss
  aug_config = config.augment
  aug_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  decode = bool(loss_config.reconstruction)

  def step_fn(state, target, images, indices, kl_scale):
    key = jax.random.fold_in(aug_key, state.step)
    x = images.astype(jnp.float32) / 255.0
    views = jnp.concatenate(augment.two_views(key, x, aug_config))
    p = target[indices]
    clustered = jnp.sum(p, axis=1) > 0 if instance_only else None

    def loss_fn(params):
      outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, views,
          train=True, decode=decode, mutable=['batch_stats'])
      terms = compute_loss_terms(outputs, views, p, loss_config, clustered)
      total = sum(loss_config[name] * value * (kl_scale if name == 'kl' else 1)
                  for name, value in terms.items())
      return total, (terms, updates['batch_stats'])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (terms, batch_stats)), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updated = state.replace(
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state)
    # A non-finite loss or gradient freezes the state at the last good one
    # and records where and which; the host stops at its next check.
    bits = [jnp.logical_not(jnp.isfinite(terms[name])) if name in terms
            else jnp.bool_(False) for name in TERMS]
    grads_finite = jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    bits.append(jnp.logical_not(jnp.isfinite(total) & grads_finite))
    mask = sum(b.astype(jnp.int32) << i for i, b in enumerate(bits))
    healthy = (mask == 0) & (state.nonfinite_step < 0)
    new_state = jax.tree.map(
        lambda new, old: jnp.where(healthy, new, old), updated, state)
    first_bad = (state.nonfinite_step < 0) & (mask != 0)
    new_state = new_state.replace(
        step=state.step + 1,
        nonfinite_step=jnp.where(first_bad, state.step + 1,
                                 state.nonfinite_step),
        nonfinite_terms=jnp.where(first_bad, mask, state.nonfinite_terms))
    return new_state, dict(terms, total=total)

  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P('data'))
  return jax.jit(
      step_fn,
      in_shardings=(replicated, replicated, batch, batch, replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=0)


def make_forward(model, mesh):
  """Jitted evaluation forward: variables, uint8 images → dict of outputs."""

  def forward(variables, images):
    out = model.apply(variables, images.astype(jnp.float32) / 255.0,
                      train=False, decode=False)
    return {'embedding': out.embedding, 'cluster_probs': out.cluster_probs,
            'student_t': out.student_t}

  return jax.jit(
      forward,
      in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))),
      out_shardings=NamedSharding(mesh, P()))


class Trainer:
  """Holds what a run needs; its methods are the phases of the method."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.start_time = time.time()
    self.config = config
    self.workdir = workdir
    # Everything that can be the user's mistake is checked before anything is
    # compiled or written.
    self.dataset = data.load_dataset(config.dataset)
    maybe_initialize_distributed(config)
    self.mesh = make_mesh()
    num_devices = self.mesh.size
    self.clustered = self.dataset.clustered
    check_config(config, len(self.clustered), num_devices)
    known = data.NUM_CLASSES.get(config.dataset.name)
    if known and known != config.dataset.num_clusters:
      logging.warning('%s has %d classes; clustering into K=%d '
                      '(config.dataset.num_clusters).', config.dataset.name,
                      known, config.dataset.num_clusters)
    check_workdir(workdir)
    self.model_signature = model_signature(config, self.dataset.channels)
    check_model_signature(workdir, self.model_signature)
    n, bs = len(self.dataset), config.train.batch_size
    self.steps_per_epoch = n // bs
    self.total_steps = config.train.num_epochs * self.steps_per_epoch
    self.model = models.build_model(
        config, self.dataset.channels, compute_dtype(config))
    self.learning_rate = learning_rate_schedule(config.train, self.total_steps)
    self.tx = optax.adam(self.learning_rate)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P('data'))

    self.warmup_steps = min(
        config.train.warmup_epochs * self.steps_per_epoch, self.total_steps)
    eval_bs = max(config.train.eval_batch_size, num_devices)
    self.eval_batch_size = -(-eval_bs // num_devices) * num_devices

    image_shape = self.dataset.images.shape[1:]
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0)
    init = jax.jit(
        lambda key: create_train_state(self.model, self.tx, key, image_shape),
        out_shardings=self.replicated)
    self.state = init(init_key)
    # DEC's target P; rows of zeros mark instance-only examples.
    k = config.dataset.num_clusters
    self._instance_only = self.dataset.instance_only is not None
    self.target = self._target_array(np.full((len(self.clustered), k), 1 / k))
    self.train_step = make_train_step(self.model, self.tx, config, self.mesh,
                                      self._instance_only)
    self.forward = make_forward(self.model, self.mesh)

    self.checkpoints = self._open_checkpoints()
    self.writer = metric_writer.MetricWriter(workdir)
    self.stop_requested = False

  def _open_checkpoints(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(self.workdir, 'checkpoints')),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self.config.train.max_checkpoints, create=True))

  # -- checkpoints ---------------------------------------------------------

  def _checkpoint_tree(self):
    return {'state': self.state, 'target': self.target}

  def restore_latest(self) -> bool:
    """Restores the newest readable checkpoint; False if there is none.

    A checkpoint that cannot be read (truncated, files missing) is moved to
    WORKDIR/damaged_checkpoints with a warning, and the one before it is
    tried. If checkpoints exist but none can be read, that is an error: the
    run never starts silently from scratch.
    """
    steps = sorted(self.checkpoints.all_steps(), reverse=True)
    if not steps:
      return False
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        self._checkpoint_tree())
    damaged = []
    for step in steps:
      try:
        restored = self.checkpoints.restore(
            step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Checkpoint of step %d in %s cannot be read (%s: %s); '
                        'trying the previous one.', step, self.workdir,
                        type(e).__name__, str(e).splitlines()[0][:200])
        damaged.append(step)
        continue
      self.state, self.target = restored['state'], restored['target']
      if damaged:
        self._set_aside(damaged)
      logging.info('Resumed from the checkpoint of step %d in %s.', step,
                   self.workdir)
      return True
    raise CheckpointError(
        f'None of the checkpoints in {self.workdir}/checkpoints (steps '
        f'{sorted(steps)}) can be read. Move them away to start afresh, or '
        'use another --workdir.')

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged checkpoints out of the manager's way, keeping them."""
    self.checkpoints.close()
    aside = os.path.join(self.workdir, 'damaged_checkpoints')
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      source = os.path.join(self.workdir, 'checkpoints', str(step))
      target = os.path.join(aside, f'{step}-{int(time.time())}')
      os.replace(source, target)
      logging.warning('Moved the damaged checkpoint of step %d to %s.', step,
                      target)
    self.checkpoints = self._open_checkpoints()

  def save(self, force: bool = False) -> None:
    """Checkpoints the state, unless it went non-finite (then it raises)."""
    self.check_finite()
    step = int(self.state.step)
    if step == self.checkpoints.latest_step():
      return  # already saved (a periodic save at the last or a stop step)
    write_model_signature(self.workdir, self.model_signature)
    self.checkpoints.save(
        step, args=ocp.args.StandardSave(self._checkpoint_tree()),
        force=force)

  def check_finite(self) -> None:
    """Raises if a step met a non-finite loss (the state is the last good)."""
    bad_step = int(self.state.nonfinite_step)
    if bad_step < 0:
      return
    mask = int(self.state.nonfinite_terms)
    names = [name for i, name in enumerate(TERMS + ('total or gradient',))
             if mask >> i & 1]
    raise FloatingPointError(
        f'Non-finite loss at step {bad_step}: {", ".join(names)}. Training '
        'stopped; the checkpoints in the workdir are from before it. Lower '
        'config.train.learning_rate or check the data.')

  # -- passes over the whole dataset --------------------------------------

  def _target_array(self, p_clustered: np.ndarray) -> jax.Array:
    """(N, K) replicated P: given rows for the clustered examples, else 0."""
    if not self._instance_only:
      return to_global(p_clustered.astype(np.float32), self.replicated)
    full = np.zeros((len(self.dataset), p_clustered.shape[1]), np.float32)
    full[self.clustered] = p_clustered
    return to_global(full, self.replicated)

  def predict(self, images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Embeddings, cluster-head probabilities and q for each image.

    Default: the clustered training images (all but instance-only ones).
    """
    if images is None:
      images = self.dataset.images
      if self._instance_only:
        images = images[self.clustered]
    variables = {'params': self.state.params,
                 'batch_stats': self.state.batch_stats}
    return evaluate.predict_batches(
        lambda batch: self.forward(variables, batch),
        data.eval_batches(images, self.eval_batch_size),
        lambda batch: to_global(batch, self.batch_sharding))

  def init_centroids(self) -> None:
    """Phase 2: centroids ← k-means on the embeddings of the whole dataset."""
    start = time.time()
    embeddings = self.predict()['embedding']
    centroids, _ = evaluate.kmeans(
        embeddings, self.config.dataset.num_clusters, self.config.seed,
        self.config.train.kmeans_n_init)
    params = flax.core.unfreeze(self.state.params)
    params['clustering']['centroids'] = to_global(centroids, self.replicated)
    self.state = self.state.replace(params=params)
    logging.info('Centroids initialised by k-means (n_init=%d) on %d '
                 'embeddings in %.1f s.', self.config.train.kmeans_n_init,
                 len(embeddings), time.time() - start)

  def refresh_target(self) -> None:
    """Recomputes DEC's target distribution P over the whole dataset."""
    q = self.predict()['student_t']
    self.target = self._target_array(
        np.asarray(losses.target_distribution(q)))

  # -- the loop ------------------------------------------------------------

  def request_stop(self, signum=None, frame=None) -> None:
    """Asks the loop to checkpoint and return after the current step."""
    del frame
    logging.warning('Received signal %s: saving a checkpoint and stopping.',
                    signum)
    self.stop_requested = True

  def _put_host_batch(self, host_batch):
    """This host's rows of a global batch → global arrays sharded on 'data'."""
    return tuple(jax.make_array_from_process_local_data(self.batch_sharding, x)
                 for x in host_batch)

  def train(self) -> bool:
    """Trains to the last step; False if stopped early by SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
      return self._train()
    previous = signal.signal(signal.SIGTERM, self.request_stop)
    try:
      return self._train()
    finally:
      signal.signal(signal.SIGTERM, previous)

  def _train(self) -> bool:
    config, n = self.config, len(self.dataset)
    bs = config.train.batch_size
    kl_on = bool(config.loss.kl)
    start_step = int(self.state.step)
    if start_step >= self.total_steps:
      logging.info('Training already finished (step %d); evaluating.',
                   start_step)
      return True
    logging.info(
        'Training %s: %d images, K=%d, %s, %d devices, %d steps (%d epochs of '
        '%d), warm-up %d steps.', self.dataset.name, n,
        config.dataset.num_clusters, config.model.backbone, self.mesh.size,
        self.total_steps, config.train.num_epochs, self.steps_per_epoch,
        self.warmup_steps)
    interval = config.train.target_update_interval
    last_log_time, last_log_step = time.time(), start_step
    batches = data.prefetch_to_device(
        data.train_batches(self.dataset, bs, config.seed, start_step,
                           self.total_steps, jax.process_index(),
                           jax.process_count()),
        self._put_host_batch)
    for step, (images, indices) in zip(
        range(start_step, self.total_steps), batches):
      if step == self.warmup_steps and kl_on:
        self.init_centroids()
      if kl_on and step >= self.warmup_steps and (
          (step - self.warmup_steps) % interval == 0):
        self.refresh_target()
      kl_scale = np.float32(step >= self.warmup_steps)
      self.state, metrics = self.train_step(
          self.state, self.target, images, indices, kl_scale)
      done = step + 1
      if step == start_step:  # compilation: keep it out of the img/s figure
        jax.block_until_ready(metrics)
        logging.info('Compiled and ran the first step in %.1f s.',
                     time.time() - last_log_time)
        last_log_time, last_log_step = time.time(), done
      elif (done % config.train.log_every_steps == 0 or
            done == self.total_steps):
        metrics = jax.device_get(metrics)  # waits for the step to finish
        now = time.time()
        self.check_finite()
        rate = (done - last_log_step) * bs / (now - last_log_time)
        eta = (self.total_steps - done) * bs / rate
        terms = ' '.join(f'{k}={float(metrics[k]):.4f}'
                         for k in TERMS + ('total',) if k in metrics)
        logging.info('epoch %d step %d/%d | %s | %.0f img/s | ETA %s',
                     done // self.steps_per_epoch, done, self.total_steps,
                     terms, rate, _format_seconds(eta))
        self.writer.write_scalars(done, {
            **{f'loss/{k}': v for k, v in metrics.items()},
            # the rate of the step just taken (Adam's count starts at 0)
            'learning_rate': float(self.learning_rate(done - 1)),
            'images_per_second': rate})
        last_log_time, last_log_step = now, done
      every = config.train.eval_every_steps
      if every and done % every == 0 and done < self.total_steps:
        self.evaluate_during_training(done)
      if done % config.train.checkpoint_every_steps == 0:
        self.save()
      if self.stop_requested:
        self.save(force=True)
        self.checkpoints.wait_until_finished()
        logging.warning('Stopped at step %d; the same command resumes.', done)
        return False
    self.save(force=True)
    self.checkpoints.wait_until_finished()
    return True

  def _clustered_labels(self) -> np.ndarray | None:
    labels = self.dataset.labels
    return None if labels is None else labels[self.clustered]

  def evaluate_during_training(self, step: int) -> None:
    """ACC/NMI/ARI of the cluster head and DEC now, to the metric logs."""
    labels = self._clustered_labels()
    if labels is None:
      return
    outputs = self.predict()
    scalars = {}
    for name, probs in (('cluster_head', outputs['cluster_probs']),
                        ('dec', outputs['student_t'])):
      if name == 'dec' and (step <= self.warmup_steps or
                            not self.config.loss.kl):
        continue  # the centroids have not been set yet
      for metric, value in evaluate.clustering_metrics(
          labels, probs.argmax(1)).items():
        scalars[f'eval/{name}_{metric}'] = value
    logging.info('evaluation at step %d: %s', step, ' '.join(
        f'{k[5:]}={v:.3f}' for k, v in scalars.items()))
    self.writer.write_scalars(step, scalars)

  def finish_dec_assignment(self) -> None:
    """Centroids for DEC's assignment when no joint phase set them.

    Then DEC's assignment is nearest-centroid of k-means on the final
    embeddings (deterministic in the seed).
    """
    if self.total_steps <= self.warmup_steps or not self.config.loss.kl:
      self.init_centroids()

  def evaluate(self) -> dict:
    """Metrics of the three assignments: results.json, report/, metric logs."""
    self.finish_dec_assignment()
    outputs = self.predict()
    k = self.config.dataset.num_clusters
    labels = self._clustered_labels()
    metrics = evaluate.evaluate_assignments(
        labels, outputs['cluster_probs'], outputs['student_t'],
        outputs['embedding'], k, self.config.seed)
    results = {
        'dataset': self.config.dataset.name,
        'num_examples': len(self.clustered),
        'num_clusters': k,
        'seconds': time.time() - self.start_time,
        **metrics,
    }
    if jax.process_index() == 0:  # one writer on a shared workdir
      evaluate.write_results(self.workdir, results)
      images = self.dataset.images
      if self._instance_only:
        images = images[self.clustered]
      path = report.write_report(
          self.workdir, images, labels, outputs['cluster_probs'],
          outputs['student_t'], results, self.dataset.class_names)
      logging.info('Wrote the cluster report to %s.', path)
    self.writer.write_scalars(int(self.state.step), {
        f'eval/{name}_{metric}': value
        for name, values in metrics.items() if values
        for metric, value in values.items()})
    print(evaluate.format_results_table(results), flush=True)
    return results

  def close(self):
    self.checkpoints.close()
    self.writer.close()


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else (
      f'{rest // 60}:{rest % 60:02d}')


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains (resuming from WORKDIR's latest checkpoint), then evaluates.

  Returns:
    The results dict also written to WORKDIR/results.json, or None when a
    SIGTERM stopped training early (after writing a checkpoint).
  """
  trainer = Trainer(config, workdir)
  try:
    trainer.restore_latest()
    if not trainer.train():
      return None
    return trainer.evaluate()
  finally:
    trainer.close()


def _trained(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
  """A Trainer restored from WORKDIR's latest checkpoint (error if none)."""
  missing = CheckpointError(
      f'No checkpoint in {workdir}/checkpoints: train first (--mode=train) '
      'with this --workdir.')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise missing
  trainer = Trainer(config, workdir)
  if not trainer.restore_latest():
    trainer.close()
    raise missing
  return trainer


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoint of WORKDIR without training."""
  trainer = _trained(config, workdir)
  try:
    return trainer.evaluate()
  finally:
    trainer.close()


def predict_workdir(config: ml_collections.ConfigDict,
                    workdir: str) -> list[dict]:
  """Assigns config.predict.input's images with WORKDIR's latest checkpoint.

  Writes WORKDIR/predictions.csv (image, cluster, confidence, dec_cluster;
  one row per image in a stable order) and prints the images per cluster.
  """
  source = config.predict.input
  if not source:
    raise ConfigError('--mode=predict needs images: set '
                      '--config.predict.input=FOLDER or FILE.npz.')
  if not os.path.exists(source):
    raise DataError(f'config.predict.input={source!r}: no such file or '
                    'folder.')
  trainer = _trained(config, workdir)
  try:
    names, images = data.load_predict_images(
        source, config.dataset.image_size, trainer.dataset.channels,
        config.dataset.skip_bad_images)
    trainer.finish_dec_assignment()
    outputs = trainer.predict(images)
  finally:
    trainer.close()
  probs = outputs['cluster_probs']
  rows = [{'image': name, 'cluster': int(p.argmax()),
           'confidence': float(p.max()), 'dec_cluster': int(q.argmax())}
          for name, p, q in zip(names, probs, outputs['student_t'])]
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'predictions.csv')
    with open(path, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(
          dict(row, confidence=f'{row["confidence"]:.4f}') for row in rows)
    sizes = np.bincount([r['cluster'] for r in rows],
                        minlength=config.dataset.num_clusters)
    print(f'{len(rows)} images from {source} -> {path}\n'
          'cluster  images\n' + '\n'.join(
              f'{c:7d}  {n:6d}' for c, n in enumerate(sizes)), flush=True)
  return rows
