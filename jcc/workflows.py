"""The three modes of the command line, as functions of (config, workdir).

* :func:`train_and_evaluate`: train (resuming from WORKDIR's latest
  checkpoint), then evaluate, write ``results.json`` and the report;
* :func:`evaluate_workdir`: evaluate the latest checkpoint only;
* :func:`predict_workdir`: assign new images to the trained clusters.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from absl import logging
import ml_collections
import numpy as np

from jcc import checkpoint
from jcc import distributed
from jcc import evaluate
from jcc import parallel
from jcc import report
from jcc import signals
from jcc import sources
from jcc import validate
from jcc.errors import (CheckpointError, ConfigError, DataError, UserError,
                        is_disk_full)
from jcc.signals import EvaluationStopped
from jcc.train import TRAINING, Trainer


# Config fields that name files or folders: a leading ~ is the home folder
# (a shell expands it only at a word's start, not after --config.X=).
PATH_FIELDS = (('dataset', 'path'), ('dataset', 'tfds_data_dir'),
               ('dataset', 'manual_dir'), ('predict', 'input'))


def expand_paths(config: ml_collections.ConfigDict
                 ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ~ expanded in every path field."""
  config = config.copy_and_resolve_references()
  for group, field in PATH_FIELDS:
    if field in config.get(group, {}) and isinstance(config[group][field],
                                                     str):
      config[group][field] = os.path.expanduser(config[group][field])
  return config


def build_trainer(config: ml_collections.ConfigDict, workdir: str,
                  mode: str = TRAINING) -> Trainer:
  """A Trainer for ``config`` on ``workdir``, built in the order that reports
  a mistake before any work: the config alone, the other processes joined,
  the platform, the data, the config against the data, the workdir, its
  lock, then the settings a resume may not change."""
  validate.check_fields(config)
  # Joining the other processes first: a peer whose data cannot be read
  # then tells them, rather than leaving them waiting to be joined.
  distributed.initialize(config)
  parallel.check_platforms()
  dataset = sources.load_dataset(config.dataset)
  mesh = parallel.make_mesh()
  distributed.check_same_run(config, dataset.images.shape)
  validate.check_against_data(config, len(dataset.clustered), mesh.size)
  known = sources.DATASETS[config.dataset.name].num_classes
  if known and known != config.dataset.num_clusters:
    logging.warning('%s has %d classes; clustering into K=%d '
                    '(config.dataset.num_clusters).', config.dataset.name,
                    known, config.dataset.num_clusters)
  checkpoint.check_workdir(workdir)
  signature = checkpoint.model_signature(config, dataset.channels,
                                         len(dataset))
  checkpoint.check_model_signature(workdir, signature)
  # The hosts of one run share the workdir: the first one holds it.
  lock = (checkpoint.WorkdirLock(workdir, mode)
          if distributed.writes_shared_files() else None)
  try:
    # A second command on a busy workdir is told so first, by the lock.
    if mode == TRAINING:
      checkpoint.check_resume_settings(workdir, config)
    return Trainer(config, workdir, dataset, mesh, signature, lock, mode)
  except BaseException:
    if lock is not None:
      lock.release()
    raise


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains (resuming from WORKDIR's latest checkpoint), then evaluates.

  Returns:
    The results dict also written to WORKDIR/results.json, or None when a
    SIGTERM or SIGINT stopped training early (after writing a checkpoint).
  """
  config, workdir = expand_paths(config), os.path.expanduser(workdir)
  with _closing(build_trainer(config, workdir)) as trainer:
    trainer.restore_latest()
    if not trainer.train():
      return None
    return _evaluate(trainer)


@contextlib.contextmanager
def _closing(trainer: Trainer) -> Iterator[Trainer]:
  """Closes ``trainer`` at the end; a full disk met inside is one line."""
  try:
    yield trainer
  except Exception as e:  # pylint: disable=broad-except
    # Checkpoints say so themselves; the metric logs, the report and the
    # CSVs meet it as an OSError.
    if is_disk_full(e) and not isinstance(e, UserError):
      raise trainer.checkpoints.no_room() from None
    raise
  finally:
    trainer.close()


def _evaluate(trainer: Trainer) -> dict | None:
  """The evaluation of the trained model, written to WORKDIR; None when a
  stop signal abandoned it (evaluating the same checkpoint again redoes
  it)."""
  try:
    with signals.on_stop_signals(signals.stop_evaluation):
      logging.info('Evaluating the model of step %d.',
                   int(trainer.state.step))
      return _evaluate_and_write(trainer)
  except EvaluationStopped as stop:
    logging.warning(
        '%s during the evaluation: stopped it. The checkpoint of step %d is '
        'complete; the same command evaluates it again.', stop,
        int(trainer.state.step))
    if distributed.is_multiprocess():
      raise  # the other processes must be told (jcc.main)
    return None


def _evaluate_and_write(trainer: Trainer) -> dict:
  """Metrics of the three assignments: results.json, report/, metric logs
  and the results table."""
  trainer.dec_centroids_for_evaluation()
  outputs = trainer.predict()
  config, dataset = trainer.config, trainer.dataset
  labels = trainer.clustered_labels()
  metrics = evaluate.evaluate_assignments(
      labels, outputs['cluster_probs'], outputs['student_t'],
      outputs['embedding'], config.dataset.num_clusters, config.seed)
  results = {
      'dataset': config.dataset.name,
      'num_examples': len(trainer.clustered),
      'num_clusters': config.dataset.num_clusters,
      'seconds': time.time() - trainer.start_time,
      **metrics,
      # How much self-labelling would (or did) rest on, and how right.
      'confident': evaluate.confident_predictions(
          labels, outputs['cluster_probs'],
          config.train.selflabel_threshold),
  }
  if distributed.writes_shared_files():
    evaluate.write_results(trainer.workdir, results)
    images, names = dataset.images, dataset.image_names
    if dataset.instance_only is not None:
      images = images[trainer.clustered]
      names = names and [names[i] for i in trainer.clustered]
    path = report.write_report(
        trainer.workdir, images, labels, outputs['cluster_probs'],
        outputs['student_t'], results, dataset.class_names, names)
    logging.info('Wrote the cluster report to %s.', path)
  trainer.writer.write_scalars(int(trainer.state.step), {
      f'eval/{name}_{metric}': value
      for name, values in metrics.items() if values
      for metric, value in values.items()})
  if distributed.writes_shared_files():
    print(evaluate.format_results_table(results), flush=True)
  return results


def _trained(config: ml_collections.ConfigDict, workdir: str,
             mode: str) -> Trainer:
  """A Trainer restored from WORKDIR's latest checkpoint (error if none)."""
  missing = CheckpointError(
      f'No checkpoint in {workdir}/checkpoints: train first (--mode=train) '
      'with this --workdir.')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise missing
  trainer = build_trainer(config, workdir, mode)
  try:
    if not trainer.restore_latest():
      raise missing
  except BaseException:
    trainer.close()
    raise
  return trainer


def evaluate_workdir(config: ml_collections.ConfigDict,
                     workdir: str) -> dict | None:
  """Evaluates the latest checkpoint of WORKDIR without training.

  Returns the results, or None when a stop signal abandoned the evaluation.
  """
  config, workdir = expand_paths(config), os.path.expanduser(workdir)
  with _closing(_trained(config, workdir, 'an evaluation')) as trainer:
    return _evaluate(trainer)


def predict_workdir(config: ml_collections.ConfigDict,
                    workdir: str) -> list[dict]:
  """Assigns config.predict.input's images with WORKDIR's latest checkpoint.

  Writes WORKDIR/predictions.csv (image, cluster, confidence, dec_cluster;
  one row per image in a stable order) and prints the images per cluster.
  """
  config, workdir = expand_paths(config), os.path.expanduser(workdir)
  source = config.predict.input
  if not source:
    raise ConfigError('--mode=predict needs images: set '
                      '--config.predict.input=FOLDER or FILE.npz.')
  if not os.path.exists(source):
    raise DataError(f'config.predict.input={source!r}: no such file or '
                    'folder.')
  sources.check_predict_input(source)
  try:
    trained = _trained(config, workdir, 'a prediction')
  except DataError as e:
    raise DataError(
        f'{e} --mode=predict reads the training data too (config.dataset, '
        'as in training): the model is rebuilt for its images and, where '
        'the run had no joint phase, DEC\'s centroids come from them.') from e
  with _closing(trained) as trainer:
    names, images = sources.load_predict_images(
        source, config.dataset.image_size, trainer.dataset.channels,
        config.dataset.skip_bad_images)
    trainer.dec_centroids_for_evaluation()
    outputs = trainer.predict(images)
    rows = report.assignment_rows({'image': names}, outputs['cluster_probs'],
                                  outputs['student_t'])
    if distributed.writes_shared_files():
      path = os.path.join(workdir, 'predictions.csv')
      report.write_assignments(path, rows)
      sizes = np.bincount([r['cluster'] for r in rows],
                          minlength=config.dataset.num_clusters)
      print(f'{len(rows)} images from {source} -> {path}\n'
            'cluster  images\n' + '\n'.join(
                f'{c:7d}  {n:6d}' for c, n in enumerate(sizes)), flush=True)
  return rows
