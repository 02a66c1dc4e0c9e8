"""The config check: settings that cannot train are refused before any work.

:func:`check_fields` needs the config alone and runs first, before any data
is read or the workdir is touched; :func:`check_against_data` needs the
number of examples and devices. Each raises :class:`jcc.errors.ConfigError`
with one line naming the field and the fix. No JAX here: the check must be
cheap and come first.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from jcc.errors import ConfigError

# The weights in config.loss, one per term of the objective; 0 removes one.
LOSS_WEIGHTS = ('instance', 'cluster', 'entropy', 'reconstruction', 'kl')
COMPUTE_DTYPES = ('float32', 'bfloat16')
LR_SCHEDULES = ('constant', 'cosine')


def check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
  """Raises unless ``value`` of ``config.<field>`` is one of ``allowed``."""
  if value not in allowed:
    raise ConfigError(f'config.{field}={value!r}: use one of '
                      f'{", ".join(map(repr, allowed))}.')


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for settings that cannot train, whatever the data."""
  k = config.dataset.num_clusters
  batch = config.train.batch_size
  check_choice('train.compute_dtype', config.train.compute_dtype,
               COMPUTE_DTYPES)
  check_choice('train.lr_schedule', config.train.lr_schedule, LR_SCHEDULES)
  if k < 2:
    raise ConfigError(f'config.dataset.num_clusters={k}: need at least 2.')
  if batch < k:
    raise ConfigError(
        f'config.train.batch_size={batch} is smaller than '
        f'config.dataset.num_clusters={k}: a batch must be able to hold '
        'every cluster. Raise the batch size.')
  for field in ('log_every_steps', 'checkpoint_every_steps',
                'target_update_every_steps'):
    if config.train[field] < 1:
      raise ConfigError(
          f'config.train.{field}={config.train[field]}: must be >= 1.')
  if not config.train.max_checkpoints >= 1:
    raise ConfigError(
        f'config.train.max_checkpoints={config.train.max_checkpoints}: must '
        'be >= 1, or the trained model would not be kept.')
  if not 0 < config.train.learning_rate < float('inf'):
    raise ConfigError(
        f'config.train.learning_rate={config.train.learning_rate}: must be a '
        'finite number > 0 (CC: 3e-4).')
  if config.train.eval_every_steps < 0:
    raise ConfigError(
        f'config.train.eval_every_steps={config.train.eval_every_steps}: '
        'must be >= 0 (0: evaluate only at the end).')
  negative = [t for t in LOSS_WEIGHTS if config.loss[t] < 0]
  if negative:
    raise ConfigError(
        f'config.loss.{negative[0]}={config.loss[negative[0]]}: loss weights '
        'must be >= 0 (0 removes the term).')


def check_against_data(config: ml_collections.ConfigDict, num_examples: int,
                       num_devices: int) -> None:
  """Raises ConfigError for settings that do not fit the data or devices."""
  k = config.dataset.num_clusters
  batch = config.train.batch_size
  if k > num_examples:
    raise ConfigError(
        f'config.dataset.num_clusters={k} exceeds the {num_examples} examples.')
  if batch > num_examples:
    raise ConfigError(
        f'config.train.batch_size={batch} exceeds the {num_examples} examples;'
        ' lower it.')
  if batch % num_devices:
    raise ConfigError(
        f'config.train.batch_size={batch} does not divide over the '
        f'{num_devices} devices; use a multiple of {num_devices}.')


def check_config(config: ml_collections.ConfigDict, num_examples: int,
                 num_devices: int) -> None:
  """Both checks: :func:`check_fields`, then :func:`check_against_data`."""
  check_fields(config)
  check_against_data(config, num_examples, num_devices)
