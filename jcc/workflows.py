"""The three modes of the command line, as functions of (config, workdir).

* :func:`train_and_evaluate`: train (resuming from WORKDIR's latest
  checkpoint), then evaluate, write ``results.json`` and the report;
* :func:`evaluate_workdir`: evaluate the latest checkpoint only;
* :func:`predict_workdir`: assign new images to the trained clusters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from jcc import distributed
from jcc import report
from jcc import sources
from jcc.errors import (CheckpointError, ConfigError, DataError, UserError,
                        is_disk_full)
from jcc.signals import EvaluationStopped
from jcc.train import Trainer


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


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains (resuming from WORKDIR's latest checkpoint), then evaluates.

  Returns:
    The results dict also written to WORKDIR/results.json, or None when a
    SIGTERM or SIGINT stopped training early (after writing a checkpoint).
  """
  config, workdir = expand_paths(config), os.path.expanduser(workdir)
  with _closing(Trainer(config, workdir)) as trainer:
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
  """trainer.evaluate(), or None when a stop signal abandoned it."""
  try:
    return trainer.evaluate()
  except EvaluationStopped as stop:
    logging.warning(
        '%s during the evaluation: stopped it. The checkpoint of step %d is '
        'complete; the same command evaluates it again.', stop,
        int(trainer.state.step))
    if distributed.is_multiprocess():
      raise  # the other processes must be told (jcc.main)
    return None


def _trained(config: ml_collections.ConfigDict, workdir: str,
             mode: str) -> Trainer:
  """A Trainer restored from WORKDIR's latest checkpoint (error if none)."""
  missing = CheckpointError(
      f'No checkpoint in {workdir}/checkpoints: train first (--mode=train) '
      'with this --workdir.')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise missing
  trainer = Trainer(config, workdir, mode)
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
    trainer.finish_dec_assignment()
    outputs = trainer.predict(images)
    rows = report.assignment_rows({'image': names}, outputs['cluster_probs'],
                                  outputs['student_t'])
    if jax.process_index() == 0:
      path = os.path.join(workdir, 'predictions.csv')
      report.write_assignments(path, rows)
      sizes = np.bincount([r['cluster'] for r in rows],
                          minlength=config.dataset.num_clusters)
      print(f'{len(rows)} images from {source} -> {path}\n'
            'cluster  images\n' + '\n'.join(
                f'{c:7d}  {n:6d}' for c, n in enumerate(sizes)), flush=True)
  return rows
