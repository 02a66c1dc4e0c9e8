"""The workdir: checks, its lock, the model signature, and orbax checkpoints.

``WORKDIR/model.json`` records what a checkpoint's shapes depend on, so that a
workdir trained with another architecture or K is refused with one line
rather than a shape error. ``WORKDIR/lock`` keeps a second run out while one
holds the workdir (:class:`WorkdirLock`). ``WORKDIR/checkpoints`` holds the
orbax checkpoints; one that cannot be read is moved to
``WORKDIR/damaged_checkpoints`` and the one before it is used.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from jcc import distributed
from jcc import files
from jcc import models
from jcc import parallel
from jcc import terms
from jcc.sources import streamed
from jcc.errors import CheckpointError, ConfigError, is_disk_full


SIGNATURE_FILE = 'model.json'
# The whole config of the run's last training start, as JSON.
SETTINGS_FILE = 'config.json'

# Settings a resume may change freely: how often the run logs, checkpoints
# and evaluates, where its data lie, where it runs. The epoch counts may
# change too, said in one line (more epochs continue training).
FREE_ON_RESUME = (
    'train.log_every_steps', 'train.eval_every_steps',
    'train.checkpoint_every_steps', 'train.max_checkpoints',
    'train.eval_batch_size', 'train.accept_changed_settings', 'dataset.path',
    'dataset.tfds_data_dir', 'dataset.tfds_download', 'dataset.manual_dir',
    'dataset.skip_bad_images', 'dataset.stream', 'predict.', 'distributed.')
LENGTH_ON_RESUME = ('train.num_epochs', 'train.selflabel_epochs')


def model_signature(config: ml_collections.ConfigDict, channels: int,
                    num_examples: int, images: str | None = None) -> dict:
  """What a checkpoint's shapes depend on; must match to restore it.

  The dataset and its size too: DEC's target P has a row per example; and
  ``images``, the content digest of the images it trains on
  (:meth:`jcc.sources.ImageDataset.content_digest`): other images of the
  same number would otherwise resume, or only be evaluated, as if they were
  the run's. And which parts a checkpoint holds besides the state and P:
  with a neighbour term, each image's neighbours; with
  train.selflabel_fixed, the fixed pseudo-labels; with
  train.momentum_encoder, the momentum encoder's weights.
  """
  return {
      'dataset': config.dataset.name,
      'num_examples': num_examples,
      'images': images,
      **models.model_spec(config, channels),
      'neighbor_terms': terms.uses_neighbors(config),
      'selflabel_fixed': config.train.selflabel_fixed,
      'momentum_encoder': bool(config.train.get('momentum_encoder', 0.0)),
  }


# What a user sets to change each key of the model signature, as a
# mismatch names it.
_SIGNATURE_SETTINGS = {
    **terms.MODEL_FIELDS,
    'dataset': 'dataset.name',
    'num_examples': 'images',
    'channels': 'image channels',
    'neighbor_terms': 'a neighbour term (loss.' + ' or loss.'.join(
        terms.NEIGHBOR_TERMS) + ')',
    'selflabel_fixed': 'train.selflabel_fixed',
    'momentum_encoder': 'a momentum encoder (train.momentum_encoder)',
    'with_decoder': 'a decoder (loss.reconstruction above 0)',
}


def write_model_signature(workdir: str, signature: dict) -> None:
  path = os.path.join(workdir, SIGNATURE_FILE)
  if not os.path.exists(path):
    with files.atomic_write(path) as f:
      json.dump(signature, f, indent=2)


def read_model_signature(workdir: str) -> dict | None:
  """WORKDIR/model.json, or None where there is none.

  Raises:
    CheckpointError: where it is not a JSON object of the model's settings
      (empty, cut short, edited): the checkpoints cannot be checked then.
  """
  path = os.path.join(workdir, SIGNATURE_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    problem = f'cannot be read as JSON ({type(e).__name__}: {e})'
  else:
    if isinstance(saved, dict) and 'backbone' in saved:
      return saved
    problem = 'is JSON, but not the object of model settings jcc writes'
  raise CheckpointError(
      f'{path} {problem}. It records what the checkpoints beside it were '
      'trained with; put back the original, or use another --workdir.')


def check_model_signature(workdir: str, signature: dict) -> None:
  """Raises if WORKDIR holds checkpoints of a differently shaped model."""
  saved = read_model_signature(workdir)
  if saved is None:
    return
  # A key that a workdir of an older version lacks has the value that
  # version built; other keys it lacks are not compared.
  saved = {**models.ABSENT_FIELD_VALUES, 'momentum_encoder': False, **saved}
  differ = [key for key, value in signature.items()
            if key in saved and saved[key] != value]
  streamed_then, streamed_now = (
      str(d).startswith(streamed.FILES_DIGEST)
      for d in (saved['images'], signature['images']))
  if differ == ['images'] and streamed_then != streamed_now:
    raise CheckpointError(
        f'{workdir} holds a model trained on these files '
        f'{"streamed" if streamed_then else "read into memory"} (config.'
        f'dataset.stream={streamed_then}), which fingerprints them otherwise; '
        f'resume with --config.dataset.stream={streamed_then}.')
  if differ == ['images']:
    raise CheckpointError(
        f'{workdir} holds a model trained on other images (as many, but '
        f'their content differs: sha256 {saved["images"]}… there, '
        f'{signature["images"]}… now). Train these in another --workdir, or '
        'give the images it was trained on.')
  if differ:
    listed = '; '.join(
        f'{_SIGNATURE_SETTINGS.get(key, key)}: {saved[key]!r} there, '
        f'{signature[key]!r} now' for key in differ)
    raise CheckpointError(
        f'{workdir} holds a model trained with other settings ({listed}). '
        'Use the config it was trained with, or another --workdir.')


# What jcc writes in a workdir: files, then folders.
WORKDIR_FILES = (SIGNATURE_FILE, SETTINGS_FILE, 'results.json',
                 'predictions.csv', 'embeddings.npy', 'metrics.jsonl', 'lock')
WORKDIR_FOLDERS = ('report', 'checkpoints', 'tensorboard',
                   'damaged_checkpoints', 'saved_model')


def _flat(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else (
          value)
  return flat


def write_settings(workdir: str, config: ml_collections.ConfigDict) -> None:
  """WORKDIR/config.json: the config a training (re)started with."""
  with files.atomic_write(os.path.join(workdir, SETTINGS_FILE)) as f:
    json.dump(config.to_dict(), f, indent=2, default=str)


def check_resume_settings(workdir: str,
                          config: ml_collections.ConfigDict) -> None:
  """Refuses a resume whose training settings differ from the run's.

  Compares ``config`` with WORKDIR/config.json (absent: nothing to compare).
  Raises ConfigError naming the changed fields and the ways out, unless
  ``config.train.accept_changed_settings``; logs a changed epoch count.
  """
  path = os.path.join(workdir, SETTINGS_FILE)
  if not os.path.isfile(path):
    return
  try:
    with open(path, encoding='utf-8') as f:
      saved = _flat(json.load(f))
  except (OSError, ValueError, AttributeError) as e:
    raise CheckpointError(
        f'{path} cannot be read ({type(e).__name__}): it records the settings '
        'the checkpoints beside it were trained with; put back the original, '
        'or use another --workdir.') from None
  now = _flat(config.to_dict())
  # Fields that one side lacks (another version of jcc) are not compared.
  changed = [name for name in sorted(set(saved) & set(now))
             if saved[name] != now[name] and
             not name.startswith(FREE_ON_RESUME)]
  for name in [n for n in changed if n in LENGTH_ON_RESUME]:
    logging.info('Resuming with %s=%s (the run had %s).', name, now.get(name),
                 saved.get(name))
  changed = [n for n in changed if n not in LENGTH_ON_RESUME]
  if not changed:
    return
  listed = '; '.join(f'{name}: {saved[name]!r} there, {now[name]!r} now'
                     for name in changed)
  if config.train.get('accept_changed_settings', False):
    logging.warning('Resuming %s with changed settings (%s), as '
                    'train.accept_changed_settings asks.', workdir, listed)
    return
  raise ConfigError(
      f'{workdir} holds a run trained with other settings ({listed}). A '
      'resume continues the same run: use another --workdir for a new one, '
      'or --config.train.accept_changed_settings=True to continue this one '
      'with the new settings.')


def check_workdir(workdir: str) -> None:
  """Creates WORKDIR if needed; raises if it or what jcc writes there cannot
  be written (a folder where a file goes, a read-only file, …)."""
  if not workdir:
    raise ConfigError('--workdir is empty: name a directory for the run.')
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir} is a file: choose a directory.')
  for name in WORKDIR_FILES:
    files.check_writable_file(os.path.join(workdir, name))
  for name in WORKDIR_FOLDERS:
    files.check_writable_folder(os.path.join(workdir, name))
  try:
    os.makedirs(workdir, exist_ok=True)
    # Named by host too: the processes of a multi-host run share WORKDIR.
    probe = os.path.join(
        workdir, f'.write_test_{socket.gethostname()}_{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(
        f'--workdir={workdir} cannot be written ({e.strerror or e}). Choose a '
        'writable directory.') from e


class WorkdirLock:
  """One run per workdir: an exclusive lock held for the life of the process.

  ``flock`` on WORKDIR/lock, which the operating system releases when the
  process ends in any way, a crash or SIGKILL included, so a stale lock
  never needs removing by hand. The file names the holder. Training,
  evaluate and predict all take it: each writes into the workdir.
  """

  HOLDERS = {'train': 'a training', 'evaluate': 'an evaluation',
             'predict': 'a prediction'}

  def __init__(self, workdir: str, mode: str):
    """Takes the lock for ``mode``: 'train', 'evaluate' or 'predict'."""
    path = os.path.join(workdir, 'lock')
    try:  # never through a link: the file truncated below must be jcc's own
      descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW |
                           os.O_CLOEXEC, 0o644)
    except OSError as e:
      cause = ('a symbolic link stands there, and jcc never writes through '
               'one: remove it' if e.errno == errno.ELOOP else
               'make it writable')
      raise CheckpointError(f'{path} cannot be opened ({e.strerror}): '
                            f'{cause}, or use another --workdir.') from None
    self._file = os.fdopen(descriptor, 'r+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      raise CheckpointError(
          f'{workdir} is in use by {holder}: one run per workdir. Wait for '
          'it to end or stop it, or use another --workdir.') from None
    self._file.seek(0)
    held_by = self._file.read()
    if held_by and not held_by.startswith(tuple(self.HOLDERS.values())):
      self.release()
      raise CheckpointError(
          f'{path} is not jcc\'s lock file (it holds other text): move it '
          'away, or use another --workdir.')
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'{self.HOLDERS[mode]} (PID {os.getpid()} on '
                     f'{socket.gethostname()})')
    self._file.flush()

  def release(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


def _megabytes(num_bytes: float) -> str:
  return f'{num_bytes / 2**20:.1f} MB'


class Checkpoints:
  """The orbax checkpoints of WORKDIR/checkpoints, the last few kept."""

  # Room kept beyond a checkpoint's arrays: orbax's metadata, the metric
  # logs, the report.
  MARGIN_BYTES = 4 * 2**20

  def __init__(self, workdir: str, max_to_keep: int):
    self.workdir = workdir
    self.max_to_keep = max_to_keep
    self._manager = self._open()
    self._checkpoint_bytes = None  # of the last save: the room one needs

  def _open(self) -> ocp.CheckpointManager:
    # Named, so that a new process reads a step's shapes (:meth:`_restore`).
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(self.workdir, 'checkpoints')),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def restore_latest(self, like: Any) -> Any | None:
    """The newest readable checkpoint, shaped and sharded like ``like``.

    None if there is none. A checkpoint that cannot be read (truncated,
    files missing) is moved to WORKDIR/damaged_checkpoints with a warning,
    and the one before it is tried. If checkpoints exist but none can be
    read, that is an error: the run never starts silently from scratch.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    damaged = []
    for step in steps:
      reason = None
      try:
        restored = self._restore(step, like)
      except Exception as e:  # pylint: disable=broad-except
        reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
      # The processes of one run must all resume from the same step.
      if distributed.any_process(reason is not None):
        logging.warning('Checkpoint of step %d in %s cannot be read (%s); '
                        'trying the previous one.', step, self.workdir,
                        reason or 'on another process')
        damaged.append(step)
        continue
      if damaged:
        self._set_aside(damaged)
      logging.info('Resumed from the checkpoint of step %d in %s.', step,
                   self.workdir)
      return restored
    raise CheckpointError(
        f'None of the checkpoints in {self.workdir}/checkpoints (steps '
        f'{sorted(steps)}) can be read. Move them away to start afresh, or '
        'use another --workdir.')

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged checkpoints out of the manager's way, keeping them."""
    self._manager.close()
    if distributed.writes_shared_files():
      aside = os.path.join(self.workdir, 'damaged_checkpoints')
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        source = os.path.join(self.workdir, 'checkpoints', str(step))
        target = os.path.join(aside, f'{step}-{int(time.time())}')
        os.replace(source, target)
        logging.warning('Moved the damaged checkpoint of step %d to %s.',
                        step, target)
    distributed.wait_for_all('jcc: damaged checkpoints set aside')
    self._manager = self._open()

  def _restore(self, step: int, like: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint ``step`` shaped and sharded like ``like``; a row-split
    table saved with another padding is fitted (:func:`parallel.fit_rows`)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        like)
    try:  # unreadable metadata: the restore below says why
      tree = self._manager.item_metadata(step)
      tree = getattr(tree, 'tree', tree)
      resized = parallel.resized_tables(
          {name: tuple(leaf.shape) for name, leaf in tree.items()
           if name in like and hasattr(leaf, 'shape')}, like)
    except Exception:  # pylint: disable=broad-except
      resized = {}
    for name, (rows, sharding) in resized.items():
      abstract[name] = abstract[name].update(
          shape=(rows,) + like[name].shape[1:], sharding=sharding)
    restored = self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract))
    for name in resized:
      restored[name] = parallel.fit_rows(
          restored[name], like[name].shape[0], like[name].sharding)
    return restored

  def save(self, step: int, tree: Any, force: bool = False) -> None:
    """Saves ``tree`` as the checkpoint of ``step``, unless it already is.

    Refused, with one line, where the disk has no room for it: checked
    before orbax starts its asynchronous write, whose threads would
    otherwise fail one after another.
    """
    if step == self._manager.latest_step():
      return  # already saved (a periodic save at the last or a stop step)
    self._checkpoint_bytes = sum(
        leaf.nbytes for leaf in jax.tree.leaves(tree))
    if shutil.disk_usage(self.workdir).free < (
        self._checkpoint_bytes + self.MARGIN_BYTES):
      raise self.no_room()
    try:
      self._manager.save(step, args=ocp.args.StandardSave(tree), force=force)
    except Exception as e:  # pylint: disable=broad-except
      if is_disk_full(e):
        raise self.no_room() from None
      raise

  def no_room(self) -> CheckpointError:
    """The one-line error for a full disk under WORKDIR."""
    free = shutil.disk_usage(self.workdir).free
    need = '' if self._checkpoint_bytes is None else (
        'a checkpoint needs about '
        f'{_megabytes(self._checkpoint_bytes + self.MARGIN_BYTES)}, ')
    latest = self._manager.latest_step()
    resume = ('from the checkpoint of step '
              f'{latest}' if latest is not None else 'from the start')
    return CheckpointError(
        f'No space left for {self.workdir}: {need}{_megabytes(free)} free. '
        f'Free some space; the same command then resumes {resume}.')

  def wait(self) -> None:
    """Blocks until the asynchronous saves are on disk."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if is_disk_full(e):
        raise self.no_room() from None
      raise

  def close(self) -> None:
    try:
      self._manager.close()  # waits for the saves in flight
    except Exception as e:  # pylint: disable=broad-except
      if not is_disk_full(e):
        raise
      logging.warning('A checkpoint in %s could not be finished: no space '
                      'left. The earlier ones are intact.', self.workdir)
