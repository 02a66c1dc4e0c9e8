"""Training metrics to TensorBoard (WORKDIR/tensorboard/) and to a JSONL file.

``WORKDIR/metrics.jsonl`` holds one JSON object per write: ``step``, ``time``
(seconds since the epoch) and the scalars. A resumed run appends; steps
between the last checkpoint and the interruption then appear twice, and the
later line is the one that counts. Only process 0 writes.

The event files are written by the tensorboard package's own writer, which
needs no TensorFlow. TensorBoard is a declared dependency, but a run must not
die where it is missing (an accelerator image without it): the writer then
warns once and writes metrics.jsonl alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from collections.abc import Mapping

from absl import logging

from jcc import distributed
from jcc.errors import is_disk_full


def tensorboard_installed() -> bool:
  """Whether the tensorboard package can be imported."""
  try:
    import tensorboard  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _event_writer(logdir: str):
  """tensorboard's event-file writer, on its own file I/O.

  Where TensorFlow is installed, tensorboard would import it (seconds, and
  on an accelerator host a second framework beside JAX) for its file I/O;
  its documented switch, an importable ``tensorboard.compat.notf``, keeps it
  on its bundled stub instead. Without effect when another part of the
  process already made tensorboard use TensorFlow.
  """
  sys.modules.setdefault('tensorboard.compat.notf',
                         types.ModuleType('tensorboard.compat.notf'))
  from tensorboard.summary import Writer  # pylint: disable=g-import-not-at-top
  return Writer(logdir)


class MetricWriter:
  """Writes scalars for a step to TensorBoard and WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.enabled = distributed.writes_shared_files()
    self._summary = None
    self._jsonl = None
    if not self.enabled:
      return
    if tensorboard_installed():
      self._summary = _event_writer(os.path.join(workdir, 'tensorboard'))
    else:
      logging.warning(
          'TensorBoard is not installed, so TensorBoard logging is off; '
          'metrics still go to %s. `pip install tensorboard` turns it on.',
          os.path.join(workdir, 'metrics.jsonl'))
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {name: float(value) for name, value in scalars.items()}
    if self._summary is not None:
      for name, value in values.items():
        self._summary.add_scalar(name, value, step)
      self._summary.flush()
    self._jsonl.write(json.dumps(
        {'step': int(step), 'time': time.time(), **values}) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self.enabled = False
    try:
      if self._summary is not None:
        self._summary.close()
      self._jsonl.close()
    except Exception as e:  # pylint: disable=broad-except
      if not is_disk_full(e):
        raise
      # Closing after a full disk is met: the error already said so.
      logging.warning('The last metric lines in %s could not be written: no '
                      'space left.', os.path.dirname(self._jsonl.name))
