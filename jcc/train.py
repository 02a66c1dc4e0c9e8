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

import time

from absl import logging
import jax
import ml_collections
import numpy as np

from jcc import checkpoint
from jcc import distributed
from jcc import metric_writer
from jcc import optimizer
from jcc import parallel
from jcc import phases
from jcc import pipeline
from jcc import plan as plan_lib
from jcc import signals
from jcc import sources
from jcc import step as step_lib


class Trainer:
  """A run's state and the loop over its phases.

  Built by :func:`jcc.workflows.build_trainer`, which checks the config, the
  data and the workdir, takes the workdir's lock and builds the model, the
  compiled steps and the checkpoints; the Trainer releases the lock when
  closed. ``settings``: the config to record in WORKDIR/config.json at the
  first checkpoint (None when not training).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               dataset: sources.ImageDataset, mesh: jax.sharding.Mesh,
               plan: plan_lib.RunPlan, run: step_lib.RunState,
               steps: step_lib.PhaseSteps, passes: phases.DatasetPasses,
               checkpoints: checkpoint.Checkpoints,
               writer: metric_writer.MetricWriter, model_signature: dict,
               settings: ml_collections.ConfigDict | None,
               lock: checkpoint.WorkdirLock | None):
    self.start_time = time.time()
    self.config, self.workdir, self.dataset, self.mesh = (config, workdir,
                                                          dataset, mesh)
    self.plan, self.run, self.steps, self.passes = plan, run, steps, passes
    self.checkpoints, self.writer, self.lock = checkpoints, writer, lock
    self.model_signature, self._settings = model_signature, settings
    self.learning_rate = optimizer.learning_rate_schedule(
        config.train, plan.total_steps, plan.lr_warmup_steps)
    self.batch_sharding = parallel.shardings(mesh).batch
    self._instance_only = dataset.instance_only is not None
    self.stop = signals.StopRequest()

  @property
  def state(self) -> step_lib.TrainState:
    """The train state (parameters, optimizer, step) of :attr:`run`."""
    return self.run.train

  # -- checkpoints ---------------------------------------------------------

  def restore_latest(self) -> bool:
    """Restores the newest readable checkpoint; False if there is none."""
    restored = self.checkpoints.restore_latest(self.run.checkpoint_tree())
    if restored is None:
      return False
    self.run = step_lib.RunState.from_checkpoint_tree(restored)
    return True

  def save(self, force: bool = False) -> None:
    """Checkpoints the state, unless it went non-finite (then it raises)."""
    step_lib.check_finite(self.state)
    if distributed.writes_shared_files():
      checkpoint.write_model_signature(self.workdir, self.model_signature)
      if self._settings is not None:  # the settings this training ran with
        checkpoint.write_settings(self.workdir, self._settings)
        self._settings = None
    self.checkpoints.save(int(self.state.step), self.run.checkpoint_tree(),
                          force)

  def dec_centroids_for_evaluation(self) -> None:
    """k-means centroids for DEC's assignment where no joint phase set them
    (then DEC's assignment is nearest-centroid of k-means on the final
    embeddings, deterministic in the seed)."""
    if self.plan.joint_end <= self.plan.warmup_steps or not (
        self.config.loss.kl):
      self.run = self.passes.with_kmeans_centroids(self.run)

  # -- the loop ------------------------------------------------------------

  def train(self) -> bool:
    """Trains to the last step; False if stopped early by SIGTERM or SIGINT."""
    with signals.on_stop_signals(self.stop):
      return self._train()

  def _train(self) -> bool:
    config, plan, bs = self.config, self.plan, self.config.train.batch_size
    kl_on = bool(config.loss.kl)
    start_step = int(self.state.step)
    if start_step >= plan.total_steps:
      logging.info('Training already finished (step %d); evaluating.',
                   start_step)
      return True
    logging.info('Training %s: %d images, K=%d, %s, %d devices, %s.',
                 self.dataset.name, len(self.dataset),
                 config.dataset.num_clusters, config.model.backbone,
                 self.mesh.size, plan_lib.describe(plan))
    hint = parallel.cpu_devices_hint(list(self.mesh.devices.flat), bs)
    if hint:
      logging.info(hint)
    last_log_time, last_log_step = time.time(), start_step
    compiled = step_lib.compile_steps(
        self.steps, self.run, self.dataset.train_images.shape[1:], bs,
        self.mesh, self._instance_only)
    batches = self._batches(start_step)
    for step in range(start_step, plan.total_steps):
      # P is refreshed before the steps that use it: the first joint step
      # (after k-means set the centroids), then periodically.
      joint = plan.warmup_steps <= step < plan.joint_end
      if step == plan.warmup_steps and kl_on and joint:
        self.run = self.passes.with_kmeans_centroids(self.run)
      # The self-labelling stage keeps the method's terms, KL's P included.
      if kl_on and plan.warmup_steps <= step and plan_lib.is_time(
          step, config.train.target_update_every_steps,
          start=plan.warmup_steps):
        self.run = self.passes.with_target(self.run)
      if self.run.neighbors is not None and joint and (
          step == plan.warmup_steps or plan_lib.is_time(
              step, config.train.neighbor_update_every_steps,
              start=plan.warmup_steps)):
        self.run = self.passes.with_neighbors(self.run)
        batches = self._batches(step)  # the batches ahead carry the new ones
      if step == plan.joint_end:
        self.run = self.passes.with_pseudo_labels(
            self.run, plan.total_steps - plan.joint_end)
        batches = self._batches(step)  # no neighbours from here on
      step_fn = (compiled.selflabel if step >= plan.joint_end else
                 compiled.joint if joint else compiled.warmup)
      self.run, metrics = step_fn(self.run, next(batches))
      done = step + 1
      if step == start_step:  # compilation: keep it out of the img/s figure
        jax.block_until_ready(metrics)
        logging.info('Compiled and ran the first step in %.1f s.',
                     time.time() - last_log_time)
        last_log_time, last_log_step = time.time(), done
      elif plan_lib.is_time(done, config.train.log_every_steps,
                            plan.total_steps):
        now = time.time()
        self._log_progress(done, jax.device_get(metrics),
                           (done - last_log_step) * bs / (now - last_log_time))
        last_log_time, last_log_step = now, done
      # The last step's evaluation and checkpoint follow the loop.
      if (plan_lib.is_time(done, config.train.eval_every_steps) and
          done < plan.total_steps):
        self.writer.write_scalars(done, self.passes.evaluation_scalars(
            self.state, done, centroids_set=(
                done > plan.warmup_steps and kl_on)))
      if plan_lib.is_time(done, config.train.checkpoint_every_steps):
        self.save()
      if self.stop.stop_now(plan_lib.is_time(
          done, config.train.log_every_steps)):
        self.save(force=True)
        self.checkpoints.wait()
        logging.warning('Stopped at step %d; the same command resumes.', done)
        return False
    self.save(force=True)
    self.checkpoints.wait()
    return True

  def _log_progress(self, done: int, metrics: dict, rate: float) -> None:
    """The log line and the metric logs of a logging step (``rate``: images
    per second since the last one)."""
    step_lib.check_finite(self.state)
    total = self.plan.total_steps
    eta = (total - done) * self.config.train.batch_size / rate
    terms = ' '.join(f'{k}={float(metrics[k]):.4f}'
                     for k in step_lib.TERMS + ('total',) if k in metrics)
    logging.info('epoch %d step %d/%d | %s | %.0f img/s | ETA %s',
                 done // self.plan.steps_per_epoch, done, total, terms, rate,
                 _format_seconds(eta))
    self.writer.write_scalars(done, {
        **{f'loss/{k}': v for k, v in metrics.items()},
        # the rate of the step just taken (Adam's count starts at 0)
        'learning_rate': float(self.learning_rate(done - 1)),
        'images_per_second': rate})

  def _batches(self, start_step: int):
    """The global batches (:class:`jcc.step.Batch`) from ``start_step`` on,
    placed on the devices."""
    plan = self.plan
    # Neighbour images once the neighbours are mined, until the
    # self-labelling stage.
    neighbors = None
    if self.run.neighbors is not None and (
        plan.warmup_steps <= start_step < plan.joint_end):
      neighbors = np.asarray(self.run.neighbors.addressable_data(0))
    return pipeline.prefetch_to_device(
        pipeline.train_batches(
            self.dataset, self.config.train.batch_size, self.config.seed,
            start_step, plan.total_steps, jax.process_index(),
            jax.process_count(), neighbors),
        lambda host_batch: step_lib.Batch(**dict(zip(
            host_batch, parallel.from_process_local(
                self.batch_sharding, *host_batch.values())))))

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
