"""The run plan: every duration of the config resolved to steps, once.

The config counts in epochs of the dataset it was made for; the loop only
sees steps. A dataset so small that ``train.num_epochs`` are fewer than
``train.min_steps`` steps trains a whole multiple of every epoch count
(warm-up and self-labelling in proportion) instead.
"""

from __future__ import annotations

import dataclasses

import ml_collections


def min_steps_factor(method_steps: int, min_steps: int) -> int:
  """The smallest whole number of times the method's epochs must be
  repeated to reach ``min_steps`` (1 when they already do)."""
  return max(1, -(-min_steps // max(method_steps, 1)))


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """Step counts of a run; step s is in phase

  * warm-up: s < warmup_steps;
  * joint training: warmup_steps <= s < joint_end;
  * self-labelling: joint_end <= s < total_steps.
  """
  steps_per_epoch: int
  epoch_factor: int  # how many times every epoch count is repeated
  num_epochs: int  # of the method (warm-up and joint), after the factor
  selflabel_epochs: int
  warmup_steps: int
  joint_end: int
  total_steps: int
  lr_warmup_steps: int = 0  # the learning rate's linear ramp from 0

  @property
  def warmup_epochs(self) -> int:
    return self.warmup_steps // max(self.steps_per_epoch, 1)


def plan_run(train: ml_collections.ConfigDict, num_examples: int) -> RunPlan:
  """``config.train``'s epochs as steps for ``num_examples`` images."""
  steps_per_epoch = num_examples // train.batch_size
  factor = min_steps_factor(train.num_epochs * steps_per_epoch,
                            train.min_steps)
  num_epochs = train.num_epochs * factor
  selflabel_epochs = train.selflabel_epochs * factor
  joint_end = num_epochs * steps_per_epoch
  return RunPlan(
      steps_per_epoch=steps_per_epoch, epoch_factor=factor,
      num_epochs=num_epochs, selflabel_epochs=selflabel_epochs,
      warmup_steps=min(train.warmup_epochs * factor * steps_per_epoch,
                       joint_end),
      joint_end=joint_end,
      total_steps=joint_end + selflabel_epochs * steps_per_epoch,
      lr_warmup_steps=min(train.get('lr_warmup_epochs', 0) * factor *
                          steps_per_epoch, joint_end))


def is_time(step: int, every: int, last: int | None = None,
            start: int = 0) -> bool:
  """Whether a periodic action is due at ``step`` (big_vision's itstime).

  Due every ``every`` steps counted from ``start`` (never when ``every`` is
  0), and at ``last``, where given. Logging, evaluation and checkpoints ask
  after a step (``step`` = steps done), the P refresh before one.
  """
  if step == last:
    return True
  return every > 0 and step >= start and (step - start) % every == 0


def min_steps_notice(plan: RunPlan, train: ml_collections.ConfigDict,
                     num_examples: int) -> str | None:
  """The line that says a run trains more epochs than asked, under
  ``train.min_steps``; None where it trains the epochs asked."""
  if plan.epoch_factor == 1:
    return None
  return (f'{train.num_epochs} epochs of {num_examples} images are '
          f'{train.num_epochs * plan.steps_per_epoch} steps, under '
          f'train.min_steps={train.min_steps}: training {plan.num_epochs} '
          f'epochs (warm-up {train.warmup_epochs * plan.epoch_factor}) '
          'instead; train.min_steps=0 trains the epochs as asked.')


def describe(plan: RunPlan) -> str:
  """The plan in words, for the log line that starts a training."""
  selflabel = (f', self-labelling from step {plan.joint_end}'
               if plan.total_steps > plan.joint_end else '')
  return (f'{plan.total_steps} steps ({plan.num_epochs + plan.selflabel_epochs}'
          f' epochs of {plan.steps_per_epoch}), warm-up {plan.warmup_steps} '
          f'steps{selflabel}')
