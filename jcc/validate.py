"""The config check: settings that cannot train are refused before any work.

Every field of ``configs/default.py`` has one rule in :data:`FIELDS` (its type
and range); :func:`check_fields` applies them and the checks between fields.
It needs the config alone and runs first, before any data is read or the
workdir is touched. :func:`check_against_data` needs the number of examples
and devices. Each raises :class:`jcc.errors.ConfigError` with one line naming
the field and what it must be. No JAX at import: the check is cheap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections

from jcc.errors import ConfigError
from jcc.terms import (COMPUTE_DTYPES, JOINT_TERMS, LOSS_WEIGHTS,
                       LR_SCHEDULES, MODEL_FIELDS, NEIGHBOR_TERMS, OPTIMIZERS,
                       WARMUP_TERMS, uses_neighbors)

__all__ = ['COMPUTE_DTYPES', 'JOINT_TERMS', 'LOSS_WEIGHTS', 'LR_SCHEDULES',
           'NEIGHBOR_TERMS', 'check_against_data', 'check_fields',
           'uses_neighbors']
# Pixels per side: the ConvNet needs a few to pool; above this, one image's
# activations no longer fit an accelerator's memory at any useful batch.
IMAGE_SIZES = (8, 512)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one field must be: ``ok(value)``, described for the error."""
  describe: Callable[[], str]
  ok: Callable[[Any], bool]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def integer(lo: int, hi: int | None = None) -> Rule:
  return Rule(
      lambda: f'an integer >= {lo}' if hi is None else
      f'an integer from {lo} to {hi}',
      lambda v: _is_int(v) and lo <= v and (hi is None or v <= hi))


def number(lo: float, hi: float | None = None, above: bool = False) -> Rule:
  """A finite number >= lo (> lo when ``above``), and <= hi if given."""
  return Rule(
      lambda: f'a finite number {">" if above else ">="} {lo}' +
      ('' if hi is None else f' and <= {hi}'),
      lambda v: _is_number(v) and (v > lo if above else v >= lo) and (
          hi is None or v <= hi))


def interval(lo: float, hi: float | None = None) -> Rule:
  """A pair (low, high), lo < low <= high (<= hi)."""
  return Rule(
      lambda: f'a pair (low, high) with {lo} < low <= high' +
      ('' if hi is None else f' <= {hi}'),
      lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(
          _is_number(x) for x in v) and lo < v[0] <= v[1] and (
              hi is None or v[1] <= hi))


def choice(allowed: Callable[[], Sequence[str]]) -> Rule:
  return Rule(lambda: 'one of ' + ', '.join(map(repr, allowed())),
              lambda v: v in allowed())


FLAG = Rule(lambda: 'True or False', lambda v: isinstance(v, bool))
FLAG_OR_UNSET = Rule(lambda: 'True, False or unset (None)',
                     lambda v: v is None or isinstance(v, bool))
TEXT = Rule(lambda: 'a string', lambda v: isinstance(v, str))
PROBABILITY = number(0.0, 1.0)
WEIGHT = number(0.0)


def _is_address(value: str) -> bool:
  """HOST:PORT, PORT from 1 to 65535 (IPv6 hosts in brackets)."""
  host, _, port = value.rpartition(':')
  return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def _dataset_names() -> list[str]:
  from jcc import sources  # pylint: disable=g-import-not-at-top
  return sorted(sources.DATASETS)


def _backbones() -> tuple[str, ...]:
  from jcc import models  # pylint: disable=g-import-not-at-top
  return models.BACKBONES


# One rule per field of configs/default.py (tests/test_validate.py checks
# that none is missing).
FIELDS: dict[str, Rule] = {
    'seed': integer(0, 2**32 - 1),
    'dataset.name': choice(_dataset_names),
    'dataset.path': TEXT,
    'dataset.tfds_data_dir': TEXT,
    'dataset.tfds_download': FLAG,
    'dataset.manual_dir': TEXT,
    'dataset.use_unlabelled': FLAG,
    'dataset.skip_bad_images': FLAG,
    'dataset.stream': FLAG_OR_UNSET,
    'dataset.image_size': integer(*IMAGE_SIZES),
    'dataset.crop_from_size': Rule(
        lambda: f'0 or an integer in [{IMAGE_SIZES[0]}, {IMAGE_SIZES[1]}]',
        lambda v: _is_int(v) and (
            v == 0 or IMAGE_SIZES[0] <= v <= IMAGE_SIZES[1])),
    'dataset.num_clusters': integer(2),
    'model.backbone': choice(_backbones),
    'model.convnet_widths': Rule(
        lambda: 'a non-empty tuple of integers >= 1',
        lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(
            _is_int(w) and w >= 1 for w in v)),
    'model.head_hidden': integer(1),
    'model.projection_dim': integer(1),
    'model.head_batchnorm': FLAG,
    'model.decoder_width': integer(1),
    'augment.crop_scale': interval(0.0, 1.0),
    'augment.crop_ratio': interval(0.0),
    'augment.flip_prob': PROBABILITY,
    'augment.rotation': number(0.0, 180.0),
    'augment.shear': number(0.0, 60.0),
    'augment.brightness': number(0.0),
    'augment.contrast': number(0.0),
    'augment.saturation': number(0.0),
    'augment.hue': number(0.0, 0.5),
    'augment.jitter_prob': PROBABILITY,
    'augment.jitter_random_order': FLAG,
    'augment.grayscale_prob': PROBABILITY,
    'augment.blur_prob': PROBABILITY,
    'augment.blur_sigma': interval(0.0),
    'augment.noise_stddev': number(0.0),
    **{f'loss.{name}': WEIGHT for name in LOSS_WEIGHTS},
    'loss.instance_temperature': number(0.0, above=True),
    'loss.cluster_temperature': number(0.0, above=True),
    'loss.alpha': number(0.0, above=True),
    'distributed.coordinator_address': Rule(
        lambda: "'' (one process), 'auto' (JAX detects it) or 'HOST:PORT'",
        lambda v: isinstance(v, str) and (v in ('', 'auto') or _is_address(v))),
    'distributed.num_processes': Rule(
        lambda: 'an integer >= 1, or -1 (detected)',
        lambda v: _is_int(v) and (v >= 1 or v == -1)),
    'distributed.process_id': integer(-1),
    'distributed.initialization_timeout_seconds': integer(1),
    'distributed.peer_timeout_seconds': integer(2),
    'train.batch_size': integer(2),
    'train.num_epochs': integer(1),
    'train.min_steps': integer(0),
    'train.compute_dtype': choice(lambda: COMPUTE_DTYPES),
    'train.learning_rate': number(0.0, above=True),
    'train.lr_schedule': choice(lambda: LR_SCHEDULES),
    'train.lr_warmup_epochs': integer(0),
    'train.optimizer': choice(lambda: OPTIMIZERS),
    'train.momentum': number(0.0, 1.0),
    'train.weight_decay': number(0.0),
    'train.momentum_encoder': Rule(
        lambda: 'a number from 0 (none) up to, not including, 1',
        lambda v: _is_number(v) and 0 <= v < 1),
    'train.warmup_epochs': integer(0),
    'train.warmup_terms': choice(lambda: WARMUP_TERMS),
    'train.kmeans_n_init': integer(1),
    'train.target_update_every_steps': integer(1),
    'train.num_neighbors': integer(1),
    'train.neighbor_update_every_steps': integer(0),
    'train.selflabel_epochs': integer(0),
    'train.selflabel_threshold': PROBABILITY,
    'train.selflabel_balance': FLAG,
    'train.selflabel_fixed': FLAG,
    'train.selflabel_weight': WEIGHT,
    'train.selflabel_cutout': PROBABILITY,
    'train.log_every_steps': integer(1),
    'train.eval_every_steps': integer(0),
    'train.checkpoint_every_steps': integer(1),
    # 0 would keep no checkpoint: the trained model would be lost.
    'train.max_checkpoints': integer(1),
    'train.eval_batch_size': integer(1),
    'train.accept_changed_settings': FLAG,
    'predict.input': TEXT,
    'predict.output': TEXT,
}


def flatten(config: ml_collections.ConfigDict,
            prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted field name, value) for every leaf of ``config``."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
  """Raises unless ``value`` of ``config.<field>`` is one of ``allowed``."""
  rule = choice(lambda: allowed)
  if not rule.ok(value):
    raise ConfigError(f'config.{field}={value!r}: must be {rule.describe()}.')


def check_model_fields(config: ml_collections.ConfigDict, where: str) -> None:
  """Raises ConfigError for a model field of ``config`` (a saved model's,
  from ``where``) that no model can have: each field of
  :data:`jcc.terms.MODEL_FIELDS` it holds, and train.compute_dtype."""
  values = dict(flatten(config))
  for field in (*MODEL_FIELDS.values(), 'train.compute_dtype'):
    if field in values and not FIELDS[field].ok(values[field]):
      raise ConfigError(f'{where}: {field}={values[field]!r} must be '
                        f'{FIELDS[field].describe()}.')


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for settings that cannot train, whatever the data."""
  values = dict(flatten(config))
  for field, rule in FIELDS.items():
    if field not in values:
      raise ConfigError(f'config.{field} is missing; start from '
                        'configs/default.py, which defines every field.')
    if not rule.ok(values[field]):
      raise ConfigError(f'config.{field}={values[field]!r}: must be '
                        f'{rule.describe()}.')
  d = config.distributed
  if d.num_processes != -1 and d.process_id >= d.num_processes:
    raise ConfigError(
        f'config.distributed.process_id={d.process_id} is not below '
        f'config.distributed.num_processes={d.num_processes}: the processes '
        f'are numbered 0 to {d.num_processes - 1}.')
  crop_from, size = config.dataset.crop_from_size, config.dataset.image_size
  if 0 < crop_from < size:
    raise ConfigError(
        f'config.dataset.crop_from_size={crop_from} is below '
        f'config.dataset.image_size={size}: views are cut from the larger '
        'image; set it to 0 or to at least image_size.')
  if not any(config.loss[name] for name in LOSS_WEIGHTS):
    raise ConfigError(
        'config.loss: every weight is 0, so nothing would be trained; set at '
        f'least one of {", ".join(LOSS_WEIGHTS)} > 0.')


def check_against_data(config: ml_collections.ConfigDict, num_examples: int,
                       num_devices: int) -> None:
  """Raises ConfigError for settings that do not fit the data, the devices
  or each other."""
  k = config.dataset.num_clusters
  batch = config.train.batch_size
  if k > num_examples:
    raise ConfigError(
        f'config.dataset.num_clusters={k} exceeds the {num_examples} examples.')
  if batch > num_examples:
    raise ConfigError(
        f'config.train.batch_size={batch} exceeds the {num_examples} examples;'
        ' lower it.')
  # After K against the data: a K larger than the data is the root cause.
  if batch < k:
    raise ConfigError(
        f'config.train.batch_size={batch} is smaller than '
        f'config.dataset.num_clusters={k}: a batch must be able to hold '
        'every cluster. Raise the batch size.')
  neighbors = config.train.num_neighbors
  if any(config.loss[t] for t in NEIGHBOR_TERMS) and neighbors >= num_examples:
    raise ConfigError(
        f'config.train.num_neighbors={neighbors} needs more than the '
        f'{num_examples} examples; lower it.')
  if batch % num_devices:
    raise ConfigError(
        f'config.train.batch_size={batch} does not divide over the '
        f'{num_devices} devices; use a multiple of {num_devices}.')

