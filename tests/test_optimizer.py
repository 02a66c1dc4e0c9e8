"""config.train's optimizer: the schedule's values, what weight decay
touches, and each optimizer's first update."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcc import errors
from jcc import models
from jcc import optimizer
from jcc import plan
from jcc import validate
from tests.conftest import tiny_config


def test_learning_rate_schedules():
  config = tiny_config(learning_rate=1e-3)
  constant = optimizer.learning_rate_schedule(config.train, 100)
  assert float(constant(0)) == float(constant(99)) == 1e-3
  config.train.lr_schedule = 'cosine'
  cosine = optimizer.learning_rate_schedule(config.train, 100)
  np.testing.assert_allclose(float(cosine(0)), 1e-3)
  np.testing.assert_allclose(float(cosine(50)), 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(float(cosine(100)), 0.0, atol=1e-12)
  config.train.lr_schedule = 'linear'
  with pytest.raises(errors.ConfigError, match="lr_schedule='linear'"):
    validate.check_fields(config)


def test_the_warmup_ramps_from_zero_then_the_cosine_decays_to_zero():
  config = tiny_config(learning_rate=0.4, lr_schedule='cosine')
  schedule = optimizer.learning_rate_schedule(config.train, 110,
                                              warmup_steps=10)
  np.testing.assert_allclose(float(schedule(0)), 0.0, atol=1e-12)
  np.testing.assert_allclose(float(schedule(5)), 0.2, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 0.4, rtol=1e-6)
  # The cosine spans the 100 steps after the ramp: half way at 60.
  np.testing.assert_allclose(float(schedule(60)), 0.2, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(110)), 0.0, atol=1e-9)
  config.train.lr_schedule = 'constant'
  constant = optimizer.learning_rate_schedule(config.train, 110,
                                              warmup_steps=10)
  assert float(constant(5)) == pytest.approx(0.2)
  assert float(constant(10)) == float(constant(109)) == pytest.approx(0.4)


def test_the_plan_turns_the_lr_warmup_epochs_into_steps():
  config = tiny_config(lr_warmup_epochs=3, num_epochs=10, batch_size=100)
  assert plan.plan_run(config.train, 1000).lr_warmup_steps == 30
  # Under train.min_steps the ramp lengthens with the other epoch counts.
  config.train.min_steps = 200
  run = plan.plan_run(config.train, 1000)
  assert run.epoch_factor == 2 and run.lr_warmup_steps == 60
  config.train.lr_warmup_epochs = 0
  assert plan.plan_run(config.train, 1000).lr_warmup_steps == 0


def _params(head_batchnorm=False):
  config = tiny_config()
  config.model.head_batchnorm = head_batchnorm
  model = models.build_model(config, channels=1)
  return model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))['params']


def test_weight_decay_touches_kernels_only():
  mask = optimizer.decays(_params(head_batchnorm=True))
  flat = flax.traverse_util.flatten_dict(mask, sep='/')
  decayed = {name for name, value in flat.items() if value}
  assert decayed and all(name.endswith('kernel') for name in decayed)
  assert not any('clustering' in name for name in decayed)
  assert any(name.endswith('bias') for name in flat)
  assert any(name.endswith('scale') for name in flat)  # the heads' BatchNorm


@pytest.mark.parametrize('name', ['adam', 'adamw', 'sgd', 'lars'])
def test_each_optimizer_takes_a_step_and_decays_only_kernels(name):
  params = _params()
  config = tiny_config(optimizer=name, weight_decay=0.5, learning_rate=0.1)
  tx = optimizer.make_optimizer(config.train, optax.constant_schedule(0.1))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  # With a zero gradient only weight decay moves anything: the kernels.
  assert moved == optimizer.decays(params)
  config.train.weight_decay = 0.0
  tx = optimizer.make_optimizer(config.train, optax.constant_schedule(0.1))
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert not any(jax.tree.leaves(jax.tree.map(
      lambda u: bool(jnp.any(u != 0)), updates)))


def test_sgd_is_plain_momentum_sgd():
  config = tiny_config(optimizer='sgd', momentum=0.5)
  tx = optimizer.make_optimizer(config.train, optax.constant_schedule(0.1))
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  grads = {'w': jnp.full(3, 2.0)}
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(first['w'], -0.2)
  np.testing.assert_allclose(second['w'], -0.1 * (2.0 + 0.5 * 2.0))


@pytest.mark.parametrize('field, value', [
    ('optimizer', 'rmsprop'), ('weight_decay', -1e-4), ('momentum', 1.5),
    ('lr_warmup_epochs', -1)])
def test_bad_optimizer_settings_are_one_line(field, value):
  with pytest.raises(errors.ConfigError, match=f'train.{field}'):
    validate.check_fields(tiny_config(**{field: value}))
