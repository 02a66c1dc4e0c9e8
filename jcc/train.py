"""The Trainer: the loop of the method's phases, its checkpoints and stops.

Warm-up, then (with the KL term) DEC's centroids by k-means and joint
training with P refreshed every ``train.target_update_every_steps``; with a
neighbour term, neighbours mined from the warm-up's end; with
``train.selflabel_epochs``, self-labelling last (docs/method.md). The steps
come from the run plan (:mod:`jcc.plan`), the passes over the whole dataset
from :mod:`jcc.phases`. The batches and augmentation keys of a step depend
only on (seed, step), so a run resumed from a checkpoint ends as one that
was never stopped.
"""

from __future__ import annotations

import signal
import time

from absl import logging
import flax
import jax
import ml_collections
import numpy as np
import optax

from jcc import checkpoint
from jcc import distributed
from jcc import evaluate
from jcc import metric_writer
from jcc import models
from jcc import parallel
from jcc import phases
from jcc import pipeline
from jcc import plan as plan_lib
from jcc import signals
from jcc import sources
from jcc import step as step_lib


# What a Trainer is built for, as the workdir's lock names it to a second run.
TRAINING = 'a training'


class Trainer:
  """Holds what a run needs; its methods are the phases of the method.

  Built by :func:`jcc.workflows.build_trainer`, which checks the config, the
  data and the workdir first and takes the workdir's lock; the Trainer
  releases it when closed.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               dataset: sources.ImageDataset, mesh: jax.sharding.Mesh,
               model_signature: dict, lock: checkpoint.WorkdirLock | None,
               mode: str = TRAINING):
    self.start_time = time.time()
    self.config = config
    self.workdir = workdir
    self.dataset = dataset
    self.mesh = mesh
    self.clustered = dataset.clustered
    self.model_signature = model_signature
    self._settings_written = mode != TRAINING
    self.lock = lock
    try:
      self._set_up(config, workdir, mode)
    except BaseException:
      self.release_lock()
      raise

  def _set_up(self, config: ml_collections.ConfigDict, workdir: str,
              mode: str) -> None:
    """The model, the state, the compiled step and the checkpoints."""
    n = len(self.dataset)
    self.plan = plan = plan_lib.plan_run(config.train, n)
    self.steps_per_epoch, self.epoch_factor = (plan.steps_per_epoch,
                                               plan.epoch_factor)
    self.num_epochs, self.selflabel_epochs = (plan.num_epochs,
                                              plan.selflabel_epochs)
    self.warmup_steps, self.joint_end, self.total_steps = (
        plan.warmup_steps, plan.joint_end, plan.total_steps)
    # Said only when training: an evaluation or prediction trains nothing.
    if plan.epoch_factor > 1 and mode == TRAINING:
      logging.info(
          '%d epochs of %d images are %d steps, under train.min_steps=%d: '
          'training %d epochs (warm-up %d) instead; train.min_steps=0 trains '
          'the epochs as asked.', config.train.num_epochs,
          n, config.train.num_epochs * plan.steps_per_epoch,
          config.train.min_steps, plan.num_epochs,
          config.train.warmup_epochs * plan.epoch_factor)
    self.model = models.build_model(
        config, self.dataset.channels, step_lib.compute_dtype(config))
    self.learning_rate = step_lib.learning_rate_schedule(
        config.train, self.total_steps)
    self.tx = optax.adam(self.learning_rate)
    self.replicated, self.batch_sharding = parallel.shardings(self.mesh)

    num_devices = self.mesh.size
    eval_bs = max(config.train.eval_batch_size, num_devices)
    self.eval_batch_size = -(-eval_bs // num_devices) * num_devices

    image_shape = self.dataset.images.shape[1:]
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0)
    init = jax.jit(
        lambda key: step_lib.create_train_state(
            self.model, self.tx, key, image_shape),
        out_shardings=self.replicated)
    self.state = init(init_key)
    # DEC's target P (rows of instance-only examples are 0 and unused).
    k = config.dataset.num_clusters
    self._instance_only = self.dataset.instance_only is not None
    uniform = np.zeros((len(self.dataset), k), np.float32)
    uniform[self.clustered] = 1 / k
    self.target = parallel.to_global(uniform, self.replicated)
    # The step's arguments besides the state, target and batch, placed once.
    self._joint_scales = [
        parallel.to_global(np.float32(scale), self.replicated)
        for scale in (0, 1)]  # warm-up, joint training
    self._clustered_mask = None if not self._instance_only else (
        parallel.to_global(~self.dataset.instance_only, self.replicated))
    # Each image's nearest neighbours, (N, k), mined at the end of the
    # warm-up (until then each image stands in for its own, unused).
    self._use_neighbors = step_lib.uses_neighbors(config)
    self.neighbors = np.repeat(
        np.arange(len(self.dataset), dtype=np.int32)[:, None],
        config.train.num_neighbors, axis=1) if self._use_neighbors else None
    # The warm-up's step, and the joint phase's if that one differs: with
    # neighbour terms it takes the neighbours' images too.
    self.train_step = step_lib.make_train_step(
        self.model, self.tx, config, self.mesh, self._instance_only,
        with_neighbors=False)
    self.joint_step = step_lib.make_train_step(
        self.model, self.tx, config, self.mesh, self._instance_only,
        with_neighbors=True) if self._use_neighbors else self.train_step
    # Fixed pseudo-labels, (N,), -1 for none: set at the stage's start.
    self.pseudo_labels = np.full(len(self.dataset), -1, np.int32) if (
        config.train.selflabel_fixed) else None
    self.selflabel_step = step_lib.make_train_step(
        self.model, self.tx, config, self.mesh, self._instance_only,
        with_neighbors=False, self_labeling=True,
        fixed_labels=config.train.selflabel_fixed) if (
            self.total_steps > self.joint_end) else None
    self.forward = step_lib.make_forward(self.model, self.mesh)

    self.checkpoints = checkpoint.Checkpoints(
        workdir, config.train.max_checkpoints)
    self.writer = metric_writer.MetricWriter(workdir)
    self.stop_requested = False

  # -- checkpoints ---------------------------------------------------------

  def _checkpoint_tree(self):
    tree = {'state': self.state, 'target': self.target}
    if self._use_neighbors:
      tree['neighbors'] = parallel.to_global(self.neighbors, self.replicated)
    if self.pseudo_labels is not None:
      tree['pseudo_labels'] = self._pseudo_labels_argument()
    return tree

  def _pseudo_labels_argument(self) -> jax.Array | None:
    """The fixed pseudo-labels, placed for the step; None without them."""
    if self.pseudo_labels is None:
      return None
    return parallel.to_global(self.pseudo_labels, self.replicated)

  def restore_latest(self) -> bool:
    """Restores the newest readable checkpoint; False if there is none."""
    restored = self.checkpoints.restore_latest(self._checkpoint_tree())
    if restored is None:
      return False
    self.state, self.target = restored['state'], restored['target']
    if self._use_neighbors:
      self.neighbors = np.asarray(restored['neighbors'])
    if self.pseudo_labels is not None:
      self.pseudo_labels = np.asarray(restored['pseudo_labels'])
    return True

  def save(self, force: bool = False) -> None:
    """Checkpoints the state, unless it went non-finite (then it raises)."""
    step_lib.check_finite(self.state)
    if distributed.writes_shared_files():
      checkpoint.write_model_signature(self.workdir, self.model_signature)
      if not self._settings_written:  # the settings this training ran with
        checkpoint.write_settings(self.workdir, self.config)
        self._settings_written = True
    self.checkpoints.save(int(self.state.step), self._checkpoint_tree(), force)

  # -- passes over the whole dataset (jcc.phases) -------------------------

  def predict(self, images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Embeddings, cluster-head probabilities and q for each image.

    Default: the clustered training images (all but instance-only ones).
    """
    if images is None:
      images = self.dataset.images
      if self._instance_only:  # a copy: only where some are left out
        images = images[self.clustered]
    variables = {'params': self.state.params,
                 'batch_stats': self.state.batch_stats}
    return evaluate.predict_batches(
        lambda batch: self.forward(variables, batch),
        pipeline.eval_batches(images, self.eval_batch_size),
        lambda batch: parallel.to_global(batch, self.batch_sharding))

  def init_centroids(self) -> None:
    """DEC's centroids ← k-means on the embeddings of the whole dataset."""
    centroids = phases.kmeans_centroids(self.predict()['embedding'],
                                        self.config)
    params = flax.core.unfreeze(self.state.params)
    params['clustering']['centroids'] = parallel.to_global(centroids,
                                                           self.replicated)
    self.state = self.state.replace(params=params)

  def refresh_target(self) -> None:
    """Recomputes DEC's target distribution P over the whole dataset."""
    self.target = parallel.to_global(phases.target_rows(
        self.predict()['student_t'], len(self.dataset), self.clustered),
                                     self.replicated)

  def start_self_labeling(self) -> None:
    """Says what the stage starts from; with train.selflabel_fixed, fixes
    the pseudo-labels for the stage."""
    probs = self.predict()['cluster_probs']
    if self.pseudo_labels is not None:
      self.pseudo_labels = phases.pseudo_labels(
          probs, self.config.train.selflabel_threshold, len(self.dataset),
          self.clustered)
    phases.log_self_labeling_start(
        probs, self.clustered_labels(), self.config.train,
        self.total_steps - self.joint_end, self.pseudo_labels is not None)

  def mine_neighbors(self) -> None:
    """Each image's nearest neighbours in the embedding, over all N."""
    self.neighbors = phases.nearest_neighbors(
        self.predict(self.dataset.images)['embedding'],
        self.config.train.num_neighbors, self.mesh,
        None if self._instance_only else self.dataset.labels)

  def dec_centroids_for_evaluation(self) -> None:
    """k-means centroids for DEC's assignment where no joint phase set them
    (then DEC's assignment is nearest-centroid of k-means on the final
    embeddings, deterministic in the seed)."""
    if self.joint_end <= self.warmup_steps or not self.config.loss.kl:
      self.init_centroids()

  def clustered_labels(self) -> np.ndarray | None:
    """The labels of the clustered examples, where the data has labels."""
    labels = self.dataset.labels
    return None if labels is None else labels[self.clustered]

  # -- the loop ------------------------------------------------------------

  def request_stop(self, signum=None, frame=None) -> None:
    """Asks the loop to checkpoint and return after the current step.

    After a first Ctrl-C, a second one aborts at once (KeyboardInterrupt),
    without the checkpoint.
    """
    del frame
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.warning('Received %s: %s%s.', signal.Signals(signum).name
                    if signum else 'a stop request',
                    'all processes save a checkpoint at the next logging '
                    'step and stop' if distributed.is_multiprocess() else
                    'saving a checkpoint after this step and stopping',
                    ' (Ctrl-C again aborts without it)'
                    if signum == signal.SIGINT else '')
    self.stop_requested = True

  def train(self) -> bool:
    """Trains to the last step; False if stopped early by SIGTERM or SIGINT."""
    with signals.on_stop_signals(self.request_stop):
      return self._train()

  def _compile_train_steps(self):
    """(warm-up step, joint step, self-labelling step or None) compiled for
    this run's shapes, if they fit in memory (without neighbour terms the
    first two are the same step)."""
    bs, shape = self.config.train.batch_size, self.dataset.images.shape[1:]
    images = jax.ShapeDtypeStruct((bs,) + shape, np.uint8,
                                  sharding=self.batch_sharding)
    batch = step_lib.Batch(
        images=images, indices=jax.ShapeDtypeStruct(
            (bs,), np.int32, sharding=self.batch_sharding),
        joint_scale=self._joint_scales[0], clustered=self._clustered_mask)
    compile_ = lambda step, batch: parallel.fits_in_memory(  # noqa: E731
        step.lower(self.state, self.target, batch).compile(), bs, shape[0])
    warmup = compile_(self.train_step, batch)
    joint = compile_(self.joint_step, batch.replace(
        neighbor_images=images)) if self._use_neighbors else warmup
    return warmup, joint, self.selflabel_step and compile_(
        self.selflabel_step,
        batch.replace(pseudo_labels=self._pseudo_labels_argument()))

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
        '%d), warm-up %d steps%s.', self.dataset.name, n,
        config.dataset.num_clusters, config.model.backbone, self.mesh.size,
        self.total_steps, self.num_epochs + self.selflabel_epochs,
        self.steps_per_epoch,
        self.warmup_steps, f', self-labelling from step {self.joint_end}'
        if self.total_steps > self.joint_end else '')
    hint = parallel.cpu_devices_hint(list(self.mesh.devices.flat), bs)
    if hint:
      logging.info(hint)
    last_log_time, last_log_step = time.time(), start_step
    warmup_step, joint_step, selflabel_step = self._compile_train_steps()
    batches = self._batches(start_step)
    pseudo_labels = self._pseudo_labels_argument()  # as restored
    for step in range(start_step, self.total_steps):
      # P is refreshed before the steps that use it: the first joint step
      # (after k-means set the centroids), then periodically.
      joint = self.warmup_steps <= step < self.joint_end
      if step == self.warmup_steps and kl_on and joint:
        self.init_centroids()
      # The self-labelling stage keeps the method's terms, KL's P included.
      if kl_on and self.warmup_steps <= step and plan_lib.is_time(
          step, config.train.target_update_every_steps,
          start=self.warmup_steps):
        self.refresh_target()
      if self._use_neighbors and joint and (
          step == self.warmup_steps or plan_lib.is_time(
              step, config.train.neighbor_update_every_steps,
              start=self.warmup_steps)):
        self.mine_neighbors()
        batches = self._batches(step)  # the batches ahead carry the new ones
      if step == self.joint_end:
        self.start_self_labeling()
        batches = self._batches(step)  # no neighbours from here on
        pseudo_labels = self._pseudo_labels_argument()
      images, indices, *neighbor_images = next(batches)
      step_fn = (selflabel_step if step >= self.joint_end else
                 joint_step if joint else warmup_step)
      self.state, metrics = step_fn(self.state, self.target, step_lib.Batch(
          images=images, indices=indices,
          joint_scale=self._joint_scales[step >= self.warmup_steps],
          clustered=self._clustered_mask,
          neighbor_images=neighbor_images[0] if neighbor_images else None,
          pseudo_labels=(pseudo_labels if step >= self.joint_end else None)))
      done = step + 1
      if step == start_step:  # compilation: keep it out of the img/s figure
        jax.block_until_ready(metrics)
        logging.info('Compiled and ran the first step in %.1f s.',
                     time.time() - last_log_time)
        last_log_time, last_log_step = time.time(), done
      elif plan_lib.is_time(done, config.train.log_every_steps,
                            self.total_steps):
        metrics = jax.device_get(metrics)  # waits for the step to finish
        now = time.time()
        step_lib.check_finite(self.state)
        rate = (done - last_log_step) * bs / (now - last_log_time)
        eta = (self.total_steps - done) * bs / rate
        terms = ' '.join(f'{k}={float(metrics[k]):.4f}'
                         for k in step_lib.TERMS + ('total',) if k in metrics)
        logging.info('epoch %d step %d/%d | %s | %.0f img/s | ETA %s',
                     done // self.steps_per_epoch, done, self.total_steps,
                     terms, rate, _format_seconds(eta))
        self.writer.write_scalars(done, {
            **{f'loss/{k}': v for k, v in metrics.items()},
            # the rate of the step just taken (Adam's count starts at 0)
            'learning_rate': float(self.learning_rate(done - 1)),
            'images_per_second': rate})
        last_log_time, last_log_step = now, done
      # The last step's evaluation and checkpoint follow the loop.
      if (plan_lib.is_time(done, config.train.eval_every_steps) and
          done < self.total_steps):
        self.evaluate_during_training(done)
      if plan_lib.is_time(done, config.train.checkpoint_every_steps):
        self.save()
      if self._stop_now(done):
        self.save(force=True)
        self.checkpoints.wait()
        logging.warning('Stopped at step %d; the same command resumes.', done)
        return False
    self.save(force=True)
    self.checkpoints.wait()
    return True

  def _batches(self, start_step: int):
    """The global batches from ``start_step`` on, placed on the devices."""
    return pipeline.prefetch_to_device(
        pipeline.train_batches(
            self.dataset, self.config.train.batch_size, self.config.seed,
            start_step, self.total_steps, jax.process_index(),
            jax.process_count(),
            # Neighbour images once the neighbours are mined, until the
            # self-labelling stage.
            self.neighbors if self.warmup_steps <= start_step < self.joint_end
            else None),
        lambda host_batch: parallel.from_process_local(
            self.batch_sharding, *host_batch))

  def _stop_now(self, done: int) -> bool:
    """Whether to checkpoint and stop after step ``done``.

    Processes stop together or not at all (each must write its part of the
    same checkpoint), so with several they agree at the logging steps.
    """
    if not distributed.is_multiprocess():
      return self.stop_requested
    return (plan_lib.is_time(done, self.config.train.log_every_steps) and
            distributed.any_process(self.stop_requested))

  def evaluate_during_training(self, step: int) -> None:
    """ACC/NMI/ARI of the cluster head and DEC now, to the metric logs."""
    labels = self.clustered_labels()
    if labels is None:
      return
    scalars = phases.evaluation_scalars(
        labels, self.predict(),
        centroids_set=step > self.warmup_steps and bool(self.config.loss.kl))
    logging.info('evaluation at step %d: %s', step, ' '.join(
        f'{k[5:]}={v:.3f}' for k, v in scalars.items()))
    self.writer.write_scalars(step, scalars)

  def release_lock(self) -> None:
    if self.lock is not None:
      self.lock.release()

  def close(self):
    try:
      self.checkpoints.close()
      self.writer.close()
    finally:
      self.release_lock()


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else (
      f'{rest // 60}:{rest % 60:02d}')
