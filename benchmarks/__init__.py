"""Speed and accuracy measurements; figures and commands in RESULTS.md.

Each script runs from the repository root either way:
``python -m benchmarks.NAME`` or ``python benchmarks/NAME.py``.
"""

import sys


def require_torch():
  """PyTorch, the reference some benchmarks compare against, or a clean exit.

  It is the ``bench`` extra, not a dependency of jcc.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit("This benchmark compares against PyTorch, which is not installed: "
             "pip install -e '.[bench]'")
  return torch
