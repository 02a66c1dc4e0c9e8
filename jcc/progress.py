"""What a run says while it runs: absl's INFO lines, without the chatter of
the checkpointing libraries (their warnings stay).

The command line sets this up once (:func:`configure_command_line`);
:class:`jcc.Clusterer` shows the same lines for the length of a ``fit``
(:func:`info_logging`), leaving the Python session's logging as it was.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import sys
from collections.abc import Iterator

from absl import logging

_NOISY = ('/orbax/', '/etils/', '/tensorstore/', '/jax/_src/xla_bridge.py')


class QuietLibraries(pylogging.Filter):
  """Drops INFO chatter of checkpointing libraries; keeps their warnings."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in _NOISY)
    return record.levelno >= pylogging.WARNING or not noisy


def configure_command_line() -> None:
  """INFO lines through absl's handler (``python -m jcc.main``)."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(QuietLibraries())


@contextlib.contextmanager
def info_logging() -> Iterator[None]:
  """jcc's INFO lines on stderr inside the block, for Python callers."""
  logger = pylogging.getLogger('absl')
  handler = pylogging.StreamHandler(sys.stderr)
  handler.setFormatter(pylogging.Formatter('jcc %(asctime)s  %(message)s',
                                           '%H:%M:%S'))
  handler.addFilter(QuietLibraries())
  level, propagate = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(pylogging.INFO)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
