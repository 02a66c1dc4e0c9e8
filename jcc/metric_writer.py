"""Training metrics to TensorBoard (WORKDIR/tensorboard/) and to a JSONL file.

``WORKDIR/metrics.jsonl`` holds one JSON object per write: ``step``, ``time``
(seconds since the epoch) and the scalars. A resumed run appends; steps
between the last checkpoint and the interruption then appear twice, and the
later line is the one that counts. Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import jax


class MetricWriter:
  """Writes scalars for a step to TensorBoard and WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._summary = None
    self._jsonl = None
    if not self.enabled:
      return
    from jcc import data  # pylint: disable=g-import-not-at-top
    tf = data.tensorflow()
    self._tf = tf
    self._summary = tf.summary.create_file_writer(
        os.path.join(workdir, 'tensorboard'))
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {name: float(value) for name, value in scalars.items()}
    with self._summary.as_default(step=step):
      for name, value in values.items():
        self._tf.summary.scalar(name, value)
    self._jsonl.write(json.dumps(
        {'step': int(step), 'time': time.time(), **values}) + '\n')
    self._jsonl.flush()

  def flush(self) -> None:
    if self.enabled:
      self._summary.flush()

  def close(self) -> None:
    if self.enabled:
      self._summary.close()
      self._jsonl.close()
      self.enabled = False
