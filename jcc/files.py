"""Files jcc writes for the user: whole or not at all, and safe to open.

* :func:`atomic_write`: every file of a workdir (results.json, model.json,
  the report, CSVs, predictions) is written to a temporary name beside it and
  renamed into place only once complete, so a crash or a bad input in the
  middle leaves the previous file as it was;
* :func:`csv_cell`: a text cell that a spreadsheet would run as a formula
  (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a
  leading ``'``, as OWASP advises against CSV injection; a file name that is
  not valid UTF-8 is written with its undecodable bytes as ``\\xHH``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

from jcc.errors import UserError

_FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r')


class WorkdirError(UserError):
  """Something in the workdir that jcc must write is not a writable file."""


def check_writable_folder(path: str) -> None:
  """Raises WorkdirError unless ``path`` is absent or a folder."""
  if os.path.lexists(path) and not os.path.isdir(path):
    raise WorkdirError(f'{path} is a file, where jcc writes a folder: move '
                       'it away, or use another --workdir.')


def check_writable_file(path: str) -> None:
  """Raises WorkdirError unless ``path`` is absent or a writable file (not a
  symbolic link: jcc never writes through one, into a file not its own)."""
  if os.path.islink(path):
    raise WorkdirError(f'{path} is a symbolic link, where jcc writes a file '
                       'of its own: remove the link, or use another '
                       '--workdir.')
  if os.path.lexists(path) and not os.path.isfile(path):
    kind = 'a directory' if os.path.isdir(path) else 'not a regular file'
    raise WorkdirError(f'{path} is {kind}, where jcc writes a file: move it '
                       'away, or use another --workdir.')
  if os.path.isfile(path) and not os.access(path, os.W_OK):
    raise WorkdirError(f'{path} is read-only, and jcc must replace it: make '
                       'it writable (chmod u+w), or use another --workdir.')


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w', **open_args) -> Iterator[IO]:
  """Opens a temporary file beside ``path``; renames it to ``path`` at the end.

  The rename happens only when the block finishes without an exception, after
  the data reach the disk; otherwise the temporary file is removed and
  ``path`` keeps its previous content. ``mode`` is 'w' or 'wb'.
  """
  check_writable_file(path)
  folder = os.path.dirname(os.path.abspath(path))
  descriptor, temporary = tempfile.mkstemp(
      prefix=f'.{os.path.basename(path)}.', suffix='.partial', dir=folder)
  try:
    with os.fdopen(descriptor, mode, **open_args) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temporary, 0o644 & ~umask())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise


def umask() -> int:
  """This process's umask (read without changing it)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


def csv_cell(value):
  """``value`` made safe for a CSV cell; numbers pass unchanged.

  Text that a spreadsheet would evaluate gets a leading ``'``; text holding
  undecodable bytes of a file name (Python's surrogate escapes) gets them as
  ``\\xHH``, so that the file is valid UTF-8 and each name stays distinct.
  """
  if not isinstance(value, str):
    return value
  try:
    raw = value.encode('utf-8', 'surrogateescape')
  except UnicodeEncodeError:  # a surrogate that no file name decoded to
    raw = value.encode('utf-8', 'surrogatepass')
  value = raw.decode('utf-8', 'backslashreplace')
  if value.startswith(_FORMULA_STARTS):
    return "'" + value
  return value
