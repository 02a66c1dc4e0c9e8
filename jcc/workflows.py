"""The three modes of the command line, as functions of (config, workdir).

* :func:`train_and_evaluate`: train (resuming from WORKDIR's latest
  checkpoint), then evaluate, write ``results.json`` and the report;
* :func:`evaluate_workdir`: evaluate the latest checkpoint only;
* :func:`predict_workdir`: assign new images to the trained clusters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from jcc import checkpoint
from jcc import configs
from jcc import distributed
from jcc import evaluate
from jcc import files
from jcc import inference
from jcc import metric_writer
from jcc import models
from jcc import parallel
from jcc import phases
from jcc import plan as plan_lib
from jcc import report
from jcc import signals
from jcc import sources
from jcc import step as step_lib
from jcc import trained_model
from jcc import validate
from jcc.errors import (CheckpointError, ConfigError, UserError,
                        is_disk_full)
from jcc.signals import EvaluationStopped
from jcc.train import Trainer


def expand_paths(config: ml_collections.ConfigDict
                 ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ~ expanded in every path field (a shell
  expands it only at a word's start, not after --config.X=)."""
  config = config.copy_and_resolve_references()
  for group, field in configs.PATH_FIELDS:
    if field in config.get(group, {}) and isinstance(config[group][field],
                                                     str):
      config[group][field] = os.path.expanduser(config[group][field])
  return config


def _check_workdir_apart_from_data(config: ml_collections.ConfigDict,
                                   workdir: str) -> None:
  """Refuses a workdir that is the folder of images, or inside it: jcc's own
  report/ and saved_model/ would be read as images (a class, even) by the
  next run."""
  if config.dataset.name != 'folder' or not config.dataset.path:
    return
  data = os.path.realpath(config.dataset.path)
  work = os.path.realpath(workdir)
  if work == data or work.startswith(data.rstrip(os.sep) + os.sep):
    raise ConfigError(
        f'--workdir={workdir} lies in the folder of images '
        f'(config.dataset.path={config.dataset.path}): jcc would read its own '
        'report and model as images next time. Use a workdir outside it.')


def build_trainer(config: ml_collections.ConfigDict, workdir: str,
                  mode: str = 'train',
                  dataset: sources.ImageDataset | None = None) -> Trainer:
  """A Trainer for ``config`` on ``workdir``, built in the order that reports
  a mistake before any work: the config alone, the other processes joined,
  the platform, the data, the config against the data, the workdir, its
  lock, then the settings a resume may not change; ``mode`` is what the
  Trainer is for: 'train', 'evaluate' or 'predict'. ``dataset``: images a
  caller holds in memory (:func:`jcc.sources.from_arrays`), instead of
  those config.dataset names."""
  validate.check_fields(config)
  _check_workdir_apart_from_data(config, workdir)
  # Joining the other processes first: a peer whose data cannot be read
  # then tells them, rather than leaving them waiting to be joined.
  distributed.initialize(config)
  parallel.check_platforms()
  dataset = sources.load_dataset(config.dataset, dataset)
  mesh = parallel.make_mesh()
  distributed.check_same_run(config, dataset.images.shape)
  validate.check_against_data(config, len(dataset.cluster_indices), mesh.size)
  known = sources.DATASETS[config.dataset.name].num_classes
  if known and known != config.dataset.num_clusters:
    logging.warning('%s has %d classes; clustering into K=%d '
                    '(config.dataset.num_clusters).', config.dataset.name,
                    known, config.dataset.num_clusters)
  checkpoint.check_workdir(workdir)
  signature = checkpoint.model_signature(config, dataset.channels,
                                         len(dataset),
                                         dataset.content_digest())
  checkpoint.check_model_signature(workdir, signature)
  # The hosts of one run share the workdir: the first one holds it.
  lock = (checkpoint.WorkdirLock(workdir, mode)
          if distributed.writes_shared_files() else None)
  try:
    # A second command on a busy workdir is told so first, by the lock.
    if mode == 'train':
      checkpoint.check_resume_settings(workdir, config)
    return _build(config, workdir, dataset, mesh, signature, lock, mode)
  except BaseException:
    if lock is not None:
      lock.release()
    raise


def _build(config: ml_collections.ConfigDict, workdir: str,
           dataset: sources.ImageDataset, mesh: jax.sharding.Mesh,
           signature: dict, lock: checkpoint.WorkdirLock | None,
           mode: str) -> Trainer:
  """The run plan, the model and its state, the compiled steps, the passes
  over the dataset, the checkpoints and the metric logs."""
  plan = plan_lib.plan_run(config.train, len(dataset))
  notice = plan_lib.min_steps_notice(plan, config.train, len(dataset))
  if notice and mode == 'train':  # an evaluation or prediction trains nothing
    logging.info(notice)
  instance_only = dataset.instance_only is not None
  run = step_lib.build_run(
      config, dataset.channels, plan, mesh,
      clustered=(~dataset.instance_only if instance_only else
                 np.ones(len(dataset), bool)),
      instance_only=instance_only)
  predictor = inference.Predictor(run.model, mesh,
                                  config.train.eval_batch_size)
  return Trainer(
      config, workdir, dataset, mesh, plan, run.state, run.steps,
      passes=phases.DatasetPasses(config, dataset, mesh, predictor),
      checkpoints=checkpoint.Checkpoints(workdir,
                                         config.train.max_checkpoints),
      writer=metric_writer.MetricWriter(workdir), model_signature=signature,
      settings=config if mode == 'train' else None, lock=lock)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What an evaluation gives: ``results`` (also WORKDIR/results.json),
  ``assignments`` (each clustered image's, and this process's outputs of
  its own images: with one process, all of them in the dataset's order) and
  the saved ``model``."""
  results: dict
  assignments: phases.Assignments
  model: trained_model.TrainedModel


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str,
    dataset: sources.ImageDataset | None = None) -> Evaluation | None:
  """Trains (resuming from WORKDIR's latest checkpoint), then evaluates.

  ``dataset``: images a caller holds in memory (config.dataset.name
  'arrays'), instead of those config.dataset names.

  Returns:
    The evaluation, or None when a SIGTERM or SIGINT stopped training early
    (after writing a checkpoint).
  """
  config, workdir = expand_paths(config), os.path.expanduser(workdir)
  with _closing(build_trainer(config, workdir, 'train', dataset)) as trainer:
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


def _evaluate(trainer: Trainer) -> Evaluation | None:
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


def _evaluate_and_write(trainer: Trainer) -> Evaluation:
  """The saved model, then the metrics of the three assignments:
  results.json, report/ (with the embeddings), the metric logs and the
  results table."""
  trainer.dec_centroids_for_evaluation()
  config, dataset, workdir = trainer.config, trainer.dataset, trainer.workdir
  model = trained_model.TrainedModel(
      config=config, channels=dataset.channels,
      variables=trained_model.host_variables(trainer.state),
      step=int(trainer.state.step), class_names=dataset.class_names)
  if distributed.writes_shared_files():
    model.save(os.path.join(workdir, trained_model.MODEL_FOLDER))
  assignments = trainer.passes.final_assignments(trainer.state)
  labels = trainer.passes.labels
  k = config.dataset.num_clusters
  metrics = evaluate.assignment_metrics(labels, {
      'cluster_head': assignments.cluster, 'dec': assignments.dec_cluster,
      'kmeans': assignments.kmeans_cluster})
  threshold = config.train.selflabel_threshold
  results = {
      'dataset': config.dataset.name,
      'num_examples': len(trainer.passes.cluster_indices),
      'num_clusters': k,
      'seconds': time.time() - trainer.start_time,
      **metrics,
      # How much self-labelling would (or did) rest on, and how right.
      'confident': evaluate.confidence(
          labels, assignments.cluster, evaluate.confident_clusters(
              assignments.cluster, assignments.confidence, threshold),
          k, threshold),
      'k_sweep': evaluate.k_sweep(assignments.sweep_embeddings, k,
                                  config.seed),
  }
  _write_report(trainer, results, assignments)
  trainer.writer.write_scalars(int(trainer.state.step), {
      f'eval/{name}_{metric}': value
      for name, values in metrics.items() if values
      for metric, value in values.items()})
  if distributed.writes_shared_files():
    print(evaluate.format_results_table(results), flush=True)
  return Evaluation(results, assignments, model)


def _write_report(trainer: Trainer, results: dict,
                  assignments: phases.Assignments) -> None:
  """results.json and report/: one process writes all but the embeddings,
  of which every process writes its own rows."""
  dataset, workdir = trainer.dataset, trainer.workdir
  own = assignments.own['embedding']
  if distributed.writes_shared_files():
    evaluate.write_results(workdir, results)
    images, names = dataset.images, dataset.image_names
    if dataset.instance_only is not None:
      images = images[trainer.passes.cluster_indices]
      names = names and [names[i] for i in trainer.passes.cluster_indices]
    report.write_report(
        workdir, images, trainer.passes.labels, {
            'cluster': assignments.cluster,
            'confidence': assignments.confidence,
            'dec_cluster': assignments.dec_cluster}, results,
        dataset.class_names, names)
    report.create_embeddings(workdir, len(assignments.cluster), own.shape[1])
  distributed.wait_for_all('report embeddings started')
  report.write_embedding_rows(workdir, own, assignments.rows)
  distributed.wait_for_all('report embeddings written')
  if distributed.writes_shared_files():
    path = report.finish_embeddings(workdir)
    logging.info('Wrote the cluster report and the embeddings to %s.',
                 os.path.dirname(path))


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
                     workdir: str) -> Evaluation | None:
  """Evaluates the latest checkpoint of WORKDIR without training (and saves
  its model, WORKDIR/saved_model).

  Returns the evaluation, or None when a stop signal abandoned it.
  """
  config, workdir = expand_paths(config), os.path.expanduser(workdir)
  with _closing(_trained(config, workdir, 'evaluate')) as trainer:
    return _evaluate(trainer)


def saved_model_for_prediction(config: ml_collections.ConfigDict,
                               workdir: str) -> trained_model.TrainedModel:
  """WORKDIR's saved model; ``config``, where it is a whole config (a
  --config was given), must describe the same model.

  A workdir trained before models were saved has checkpoints only: with its
  config, the model is restored from them (reading the training data once,
  for DEC's centroids where the run had no joint phase) and saved.
  """
  given = 'model' in config
  if given and trained_model.model_folder(workdir) is None and os.path.isdir(
      os.path.join(workdir, 'checkpoints')):
    with _closing(_trained(config, workdir, 'predict')) as trainer:
      trainer.dec_centroids_for_evaluation()
      trained_model.TrainedModel(
          config=config, channels=trainer.dataset.channels,
          variables=trained_model.host_variables(trainer.state),
          step=int(trainer.state.step),
          class_names=trainer.dataset.class_names,
      ).save(os.path.join(workdir, trained_model.MODEL_FOLDER))
  model = trained_model.load(workdir)
  if given:
    saved, now = (models.model_spec(c, model.channels)
                  for c in (model.config, config))
    differ = [f'{models.MODEL_FIELDS[name]}: {saved[name]!r} there, '
              f'{now[name]!r} now' for name in models.MODEL_FIELDS
              if saved[name] != now[name]]
    if differ:
      raise ConfigError(
          f'--config describes another model than {workdir} holds '
          f'({"; ".join(differ)}). Leave out --config: --mode=predict uses '
          'the workdir\'s own.')
  return model


def _predictions_lock(output: str) -> checkpoint.WorkdirLock:
  """The lock of the folder predictions go to, once its files are known to
  be writable (before any image is read)."""
  if not os.path.isdir(output):
    raise ConfigError(f'config.predict.output={output!r}: no such folder; '
                      'create it, or leave the field empty (the workdir).')
  if not os.access(output, os.W_OK):
    raise ConfigError(
        f'{output} is read-only: write the predictions elsewhere with '
        '--config.predict.output=DIR.')
  for name in report.PREDICTIONS:
    files.check_writable_file(os.path.join(output, name))
  return checkpoint.WorkdirLock(output, 'predict')


def predict_workdir(config: ml_collections.ConfigDict,
                    workdir: str) -> np.ndarray:
  """Assigns config.predict.input's images with WORKDIR's saved model.

  Needs neither the training data nor the training config: ``config`` may
  hold only what jcc/prediction_config.py gives. Writes predictions.csv
  (image, cluster, confidence, dec_cluster; one row per image in a stable
  order) and embeddings.npy (row i: the embedding of the CSV's row i) as
  one unit into config.predict.output (default: WORKDIR, which then may be
  read-only), batch by batch, and prints and returns the images per
  cluster (K,).
  """
  config, workdir = expand_paths(config), os.path.expanduser(workdir)
  source = config.predict.input
  if not source:
    raise ConfigError('--mode=predict needs images: set '
                      '--config.predict.input=FOLDER or FILE.npz.')
  sources.check_predict_input(source)
  if not os.path.isdir(workdir):
    what = 'is a file' if os.path.exists(workdir) else 'no such folder'
    raise CheckpointError(f'--workdir={workdir}: {what}; give the workdir of '
                          'a trained model (or the folder Clusterer.save '
                          'wrote).')
  output = config.predict.get('output') or workdir
  if 'distributed' in config:
    distributed.initialize(config)
  parallel.check_platforms()
  model = saved_model_for_prediction(config, workdir)
  lock = _predictions_lock(output) if (
      distributed.writes_shared_files()) else None
  try:  # the images are read once the outputs are known to be writable
    skip_bad = config.get('dataset', model.config.dataset).skip_bad_images
    names, images = sources.load_predict_images(
        source, model.image_size, model.channels, skip_bad)
    batches = inference.saved_model_predictor(model).batches(
        model.variables, images)
    if lock is not None:
      sizes = report.write_predictions(output, names, batches,
                                       model.num_clusters)
    else:  # the other processes take part in every batch, and write nothing
      sizes = report.cluster_sizes(batches, model.num_clusters)
  except OSError as e:
    if not is_disk_full(e):
      raise
    raise CheckpointError(
        f'No space left in {output} for the predictions: free some space '
        'and run the same command again; the predictions.csv and '
        'embeddings.npy there are as they were.') from None
  finally:
    if lock is not None:
      lock.release()
  if distributed.writes_shared_files():
    path = os.path.join(output, report.PREDICTIONS[0])
    print(f'{len(names)} images from {source} -> {path} (embeddings: '
          'embeddings.npy beside it)\ncluster  images\n' + '\n'.join(
              f'{c:7d}  {n:6d}' for c, n in enumerate(sizes)), flush=True)
  return sizes
