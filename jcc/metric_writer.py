"""Training metrics to TensorBoard (WORKDIR/tensorboard/) and to a JSONL file.

``WORKDIR/metrics.jsonl`` holds one JSON object per write: ``step``, ``time``
(seconds since the epoch) and the scalars. A resumed run appends; steps
between the last checkpoint and the interruption then appear twice, and the
later line is the one that counts. Only process 0 writes.

TensorBoard is a declared dependency, but a run must not die where it is
missing (an install without it, an accelerator image): the writer then warns
once and writes metrics.jsonl alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from absl import logging
import jax

from jcc import pipeline
from jcc.errors import is_disk_full


def tensorboard_installed() -> bool:
  """Whether ``tf.summary`` has its implementation (the tensorboard package).

  TensorFlow ≥ 2.16 no longer installs it, and then every ``tf.summary``
  call raises TBNotInstalledError.
  """
  try:
    import tensorboard  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


class MetricWriter:
  """Writes scalars for a step to TensorBoard and WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._summary = None
    self._jsonl = None
    if not self.enabled:
      return
    if tensorboard_installed():
      self._tf = pipeline.tensorflow()
      self._summary = self._tf.summary.create_file_writer(
          os.path.join(workdir, 'tensorboard'))
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
      with self._summary.as_default(step=step):
        for name, value in values.items():
          self._tf.summary.scalar(name, value)
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
