"""The config check: settings that cannot train are refused before any work.

Raises :class:`jcc.errors.ConfigError` with one line naming the field and
the fix.
"""

from __future__ import annotations

import ml_collections

from jcc import step
from jcc.errors import ConfigError


def check_config(config: ml_collections.ConfigDict, num_examples: int,
                 num_devices: int) -> None:
  """Raises ConfigError for settings that cannot train."""
  k = config.dataset.num_clusters
  batch = config.train.batch_size
  step.compute_dtype(config)
  step.learning_rate_schedule(config.train, 1)
  if k < 2:
    raise ConfigError(f'config.dataset.num_clusters={k}: need at least 2.')
  if k > num_examples:
    raise ConfigError(
        f'config.dataset.num_clusters={k} exceeds the {num_examples} examples.')
  if batch > num_examples:
    raise ConfigError(
        f'config.train.batch_size={batch} exceeds the {num_examples} examples;'
        ' lower it.')
  if batch < k:
    raise ConfigError(
        f'config.train.batch_size={batch} is smaller than '
        f'config.dataset.num_clusters={k}: a batch must be able to hold '
        'every cluster. Raise the batch size.')
  if batch % num_devices:
    raise ConfigError(
        f'config.train.batch_size={batch} does not divide over the '
        f'{num_devices} devices; use a multiple of {num_devices}.')
  for field in ('log_every_steps', 'checkpoint_every_steps'):
    if config.train[field] < 1:
      raise ConfigError(
          f'config.train.{field}={config.train[field]}: must be >= 1.')
  if config.train.eval_every_steps < 0:
    raise ConfigError(
        f'config.train.eval_every_steps={config.train.eval_every_steps}: '
        'must be >= 0 (0: evaluate only at the end).')
  negative = [t for t in step.TERMS if config.loss[t] < 0]
  if negative:
    raise ConfigError(
        f'config.loss.{negative[0]}={config.loss[negative[0]]}: loss weights '
        'must be >= 0 (0 removes the term).')
