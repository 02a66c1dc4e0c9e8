"""The signals that stop a run, and how a stop reaches the code running.

SIGTERM (a scheduler's preemption), SIGINT (Ctrl-C) and SIGHUP (the terminal
closed, the SSH connection dropped) stop a run: training checkpoints after
the current step and returns; an evaluation is abandoned by
:class:`EvaluationStopped`, leaving the checkpoints as they are.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class EvaluationStopped(BaseException):
  """A stop signal during an evaluation; the checkpoints are untouched.

  Raised from the signal handler wherever the evaluation is, so it is a
  BaseException, as KeyboardInterrupt is: an ``except Exception`` on the way
  (logging's own, a library's) must not swallow it.
  """


@contextlib.contextmanager
def on_stop_signals(handler: Callable) -> Iterator[None]:
  """Routes STOP_SIGNALS to ``handler`` inside the block (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {signum: signal.signal(signum, handler)
              for signum in STOP_SIGNALS}
  try:
    yield
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)


def stop_evaluation(signum, frame) -> None:
  """A handler for :func:`on_stop_signals`: raises EvaluationStopped."""
  del frame
  raise EvaluationStopped(signal.Signals(signum).name)
