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

from absl import logging

from jcc import distributed

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


class StopRequest:
  """A handler for :func:`on_stop_signals` that asks a training loop to
  checkpoint and return after the current step.

  After a first Ctrl-C, a second one aborts at once (KeyboardInterrupt),
  without the checkpoint.
  """

  def __init__(self):
    self.requested = False

  def __call__(self, signum=None, frame=None) -> None:
    del frame
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.warning('Received %s: %s%s.', signal.Signals(signum).name
                    if signum else 'a stop request',
                    'all processes save a checkpoint at the next logging '
                    'step and stop' if distributed.is_multiprocess() else
                    'saving a checkpoint after this step and stopping',
                    ' (Ctrl-C again aborts without it)'
                    if signum == signal.SIGINT else '')
    self.requested = True

  def stop_now(self, at_agreement_point: bool) -> bool:
    """Whether to checkpoint and stop now.

    Processes stop together or not at all (each must write its part of the
    same checkpoint), so with several they agree, at the steps where
    ``at_agreement_point`` (the logging steps).
    """
    if not distributed.is_multiprocess():
      return self.requested
    return at_agreement_point and distributed.any_process(self.requested)
