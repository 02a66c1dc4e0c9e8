"""The optimizer and its learning-rate schedule, from config.train.

``train.optimizer`` names one of :data:`jcc.terms.OPTIMIZERS` (optax's),
``train.weight_decay`` decays the kernels only, and the learning rate ramps
up linearly over ``lr_warmup_epochs`` (the plan's ``lr_warmup_steps``), then
stays constant or follows a cosine to 0 at the run's last step.
"""

from __future__ import annotations

from typing import Any

import flax
import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict,
                           total_steps: int,
                           warmup_steps: int = 0) -> optax.Schedule:
  """config.train's learning rate as a function of the step.

  A linear ramp from 0 over the first ``warmup_steps`` (plan.lr_warmup_steps),
  then 'constant' (CC's recipe) or 'cosine': lr·½(1 + cos(π·t/T)) over the
  T remaining steps of the whole run, ending at 0.
  """
  lr = train_config.learning_rate
  warmup_steps = min(warmup_steps, total_steps)
  if train_config.get('lr_schedule', 'constant') == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
  else:
    main = optax.constant_schedule(lr)
  if not warmup_steps:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup_steps), main], [warmup_steps])


def decays(params) -> Any:
  """Which parameters weight decay applies to: the kernels (ndim ≥ 2), not
  biases, BatchNorm's scales and offsets, nor DEC's centroids (the KL term
  alone places them)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return flax.traverse_util.unflatten_dict(
      {path: leaf.ndim >= 2 and 'clustering' not in path
       for path, leaf in flat.items()})


def make_optimizer(train_config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """config.train's optimizer at the learning rate ``schedule``.

  'adam': CC's (weight decay, where set, as an L2 term of the gradient);
  'adamw': Adam with decoupled weight decay; 'sgd': SGD with momentum
  train.momentum (SimCLR's and SCAN's pretext recipe); 'lars': LARS (SimCLR
  at large batches). Weight decay train.weight_decay on the kernels only
  (:func:`decays`).
  """
  name = train_config.get('optimizer', 'adam')
  wd = train_config.get('weight_decay', 0.0)
  momentum = train_config.get('momentum', 0.9)
  if name == 'adamw':
    return optax.adamw(schedule, weight_decay=wd, mask=decays)
  if name == 'lars':
    return optax.lars(schedule, weight_decay=wd, weight_decay_mask=decays,
                      trust_ratio_mask=decays, momentum=momentum)
  if name == 'sgd':
    update = optax.sgd(schedule, momentum=momentum)
  else:
    update = optax.adam(schedule)
  if not wd:
    return update
  return optax.chain(optax.add_decayed_weights(wd, decays), update)
