"""jcc: deep embedding image clustering based on contrastive learning, in JAX."""

__version__ = '0.1.0'


def __getattr__(name: str):
  # `from jcc import Clusterer` without importing the trainer for
  # `from jcc import losses`.
  if name == 'Clusterer':
    from jcc.api import Clusterer  # pylint: disable=import-outside-toplevel
    return Clusterer
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
