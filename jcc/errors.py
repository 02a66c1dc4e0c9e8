"""Errors that are the user's to fix: the command line prints them in one line.

Each message names the bad thing and the fix; none should surface as a shape
error from deep inside JAX.
"""

import errno
import threading


class UserError(Exception):
  """A mistake in the config, the data or the workdir."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work."""


class DataError(UserError, ValueError):
  """A dataset that is missing, unreadable or inconsistent with the config."""


class CheckpointError(UserError):
  """A workdir whose checkpoints are missing, damaged or of another model."""


def is_disk_full(error: BaseException | None) -> bool:
  """Whether ``error``, or one it was raised from, is 'no space left'.

  Orbax and TensorStore report it as an OSError or as a ValueError that
  quotes the operating system's message.
  """
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def quiet_disk_full_in_threads() -> None:
  """Keeps background threads from printing a traceback for a full disk.

  tensorboard's event writer and orbax write on threads of their own, which
  print their exception's traceback as they die. The main thread meets the
  same error at its next flush or save and the command line reports it in
  one line; other exceptions in threads are printed as before.
  """
  previous = threading.excepthook

  def hook(args: threading.ExceptHookArgs) -> None:
    if not is_disk_full(args.exc_value):
      previous(args)

  threading.excepthook = hook
