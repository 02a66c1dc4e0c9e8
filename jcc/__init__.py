"""jcc: deep embedding image clustering based on contrastive learning, in JAX."""

__version__ = '0.1.0'


def __getattr__(name: str):
  # `from jcc import Clusterer` without importing the trainer for
  # `from jcc import losses`.
  if name == 'Clusterer':
    try:
      from jcc.api import Clusterer  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      if e.name is None or e.name.startswith('jcc'):
        raise
      # A script beside a clone's jcc/ imports it without its dependencies.
      raise ImportError(
          f'jcc needs {e.name}, which this Python does not have '
          f'({__path__[0]}): install jcc with its dependencies, e.g. '
          "pip install -e . in the clone (or pip install jcc-clustering).",
          name=e.name) from e
    return Clusterer
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
