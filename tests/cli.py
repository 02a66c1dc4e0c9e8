"""`python -m jcc.main ARGS` in the test's own process, through the real
flag parser and ``jcc.main.main``: a config mistake's one line and exit
status at the cost of a function call rather than of a new process."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from typing import NamedTuple
from unittest import mock

from absl import flags
from absl import logging as absl_logging

from jcc import main as main_lib


class Finished(NamedTuple):
  status: int
  stdout: str
  stderr: str

  @property
  def last_line(self) -> str:
    lines = self.stderr.strip().splitlines()
    return lines[-1] if lines else ''


def run_main(*args: str) -> Finished:
  """Parses ``args`` as the command line does and runs ``main``."""
  argv = ['jcc.main', *args]
  # Parsing sets absl's verbosity and the root logger (level, a handler):
  # restored after, so that later tests' caplog sees their INFO lines.
  absl_logger = absl_logging.get_absl_logger()
  saved = (absl_logger.level, logging.root.level, list(logging.root.handlers))
  flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  # ml_collections finds the --config.* overrides in sys.argv.
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), (
      mock.patch.object(sys, 'argv', argv)):
    try:
      main_lib.main(main_lib._parse_flags(argv))  # pylint: disable=protected-access
      status = 0
    except SystemExit as stop:
      status = stop.code if isinstance(stop.code, int) else 1
    finally:
      # The --config.* flags that parsing defined, so that the next run
      # can define them again.
      for name in [n for n in flags.FLAGS if n.startswith('config.')]:
        delattr(flags.FLAGS, name)
      flags.FLAGS.unparse_flags()
      absl_logger.setLevel(saved[0])
      logging.root.setLevel(saved[1])
      logging.root.handlers[:] = saved[2]
  return Finished(status, out.getvalue(), err.getvalue())
