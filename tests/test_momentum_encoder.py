"""The momentum encoder (train.momentum_encoder): its contrast against float64
NumPy, its update in the step, its place in the checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jcc import checkpoint
from jcc import losses
from jcc import models
from jcc import parallel
from jcc import sources
from jcc import step
from jcc import workflows
from jcc.configs import default
from tests.conftest import SHARDED_DEVICES, tiny_config
from tests.test_losses import TOL, _sharded


def np_momentum_contrastive(q, k, tau):
  """The formula, with loops over rows, in float64."""
  q = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
  k = k.astype(np.float64) / np.linalg.norm(k, axis=1, keepdims=True)
  total = 0.0
  for i in range(len(q)):
    s = np.array([q[i] @ k[j] / tau for j in range(len(k))])
    total += -s[i] + np.log(np.sum(np.exp(s)))
  return total / len(q)


@pytest.mark.parametrize('b,d', [(1, 3), (9, 16), (64, 32)])
@pytest.mark.parametrize('tau', [0.5, 0.2])
def test_momentum_contrast_matches_reference(b, d, tau):
  rng = np.random.default_rng(b * d)
  q, k = rng.normal(size=(2, b, d)).astype(np.float32)
  want = np_momentum_contrastive(q, k, tau)
  np.testing.assert_allclose(losses.momentum_contrastive_loss(q, k, tau),
                             want, **TOL)
  unit = [losses.l2_normalize(jnp.asarray(x)) for x in (q, k)]
  np.testing.assert_allclose(
      losses.momentum_contrastive_loss(*unit, tau, normalized=True), want,
      **TOL)


def test_momentum_contrast_trains_the_queries_only():
  rng = np.random.default_rng(1)
  q, k = rng.normal(size=(2, 8, 4)).astype(np.float32)
  g_q, g_k = jax.grad(losses.momentum_contrastive_loss, argnums=(0, 1))(q, k)
  assert np.any(g_q) and not np.any(g_k)
  # Every key alike: each query is as close to its own as to the others.
  np.testing.assert_allclose(
      losses.momentum_contrastive_loss(q, np.ones_like(k)), np.log(8), **TOL)
  with pytest.raises(ValueError, match='queries and keys must both be'):
    losses.momentum_contrastive_loss(q, k[:5])


@pytest.mark.parametrize('count', SHARDED_DEVICES)
def test_momentum_contrast_under_shard_map_equals_the_global_batch(count):
  rng = np.random.default_rng(6)
  q, k = rng.normal(size=(2, 32, 16)).astype(np.float32)
  per_device = lambda a, b: losses.momentum_contrastive_loss(
      a, b, axis_name='data')
  np.testing.assert_allclose(_sharded(per_device, 2, count=count)(q, k),
                             losses.momentum_contrastive_loss(q, k), **TOL)
  got = _sharded(jax.grad(per_device), 2, P('data'), count)(q, k)
  np.testing.assert_allclose(
      got, jax.grad(losses.momentum_contrastive_loss)(q, k), **TOL)


def _one_step(config, state, run_kwargs=None):
  dataset = sources.load_dataset(config.dataset)
  model = models.build_model(config, dataset.channels)
  tx = optax.adam(config.train.learning_rate)
  mesh = parallel.make_mesh(jax.devices()[:1])
  train_step = step.make_train_step(model, tx, config, mesh)
  indices = np.arange(64, dtype=np.int32)
  target = np.full((len(dataset), 10), 0.1, np.float32)
  run = step.RunState(train=jax.tree.map(jnp.copy, state), target=target,
                      **(run_kwargs or {}))
  return train_step(run, step.Batch(images=dataset.images[indices],
                                    indices=indices))


def test_the_step_contrasts_with_the_encoder_and_moves_it_by_its_momentum():
  config = tiny_config(batch_size=64, momentum_encoder=0.9)
  model = models.build_model(config, 1)
  tx = optax.adam(config.train.learning_rate)
  state = step.create_train_state(model, tx, jax.random.key(0), (8, 8, 1))
  # An encoder unlike the network, so that the keys are its own.
  encoder = jax.tree.map(lambda x: x * 0.5,
                         jax.device_get(state.params))
  run, metrics = _one_step(config, state,
                           dict(momentum_params=jax.tree.map(jnp.copy,
                                                             encoder)))
  for before, trained, moved in zip(*map(jax.tree.leaves, (
      encoder, run.train.params, run.momentum_params))):
    np.testing.assert_allclose(moved, 0.9 * before + 0.1 * trained,
                               rtol=1e-5, atol=1e-7)
  # Without the encoder the instance term is CC's, with another value.
  plain = tiny_config(batch_size=64)
  _, plain_metrics = _one_step(plain, state)
  assert np.isfinite(metrics['instance'])
  assert float(metrics['instance']) != pytest.approx(
      float(plain_metrics['instance']), rel=1e-3)
  assert float(metrics['cluster']) == pytest.approx(
      float(plain_metrics['cluster']), rel=1e-5)


def test_a_skipped_update_leaves_the_encoder_where_it_was():
  config = tiny_config(batch_size=64, momentum_encoder=0.5)
  config.train.learning_rate = float('nan')
  model = models.build_model(config, 1)
  state = step.create_train_state(model, optax.adam(1e-3), jax.random.key(0),
                                  (8, 8, 1))
  encoder = jax.tree.map(lambda x: x + 1.0, jax.device_get(state.params))
  run, _ = _one_step(config, state, dict(
      momentum_params=jax.tree.map(jnp.copy, encoder)))
  assert int(run.train.nonfinite_step) == 1
  for a, b in zip(*map(jax.tree.leaves, (encoder, run.momentum_params))):
    np.testing.assert_array_equal(a, b)


def test_the_encoder_starts_as_a_copy_of_the_network(tmp_path):
  trainer = workflows.build_trainer(tiny_config(momentum_encoder=0.99),
                                    str(tmp_path))
  run = trainer.run
  for a, b in zip(*map(jax.tree.leaves, (run.train.params,
                                         run.momentum_params))):
    np.testing.assert_array_equal(a, b)
    # Not the same buffers: the step donates the whole state.
    assert (a.addressable_data(0).unsafe_buffer_pointer() !=
            b.addressable_data(0).unsafe_buffer_pointer())
  assert 'momentum_params' in run.checkpoint_tree()
  trainer.close()
  plain = step.RunState(train=None, target=None)
  assert 'momentum_params' not in plain.checkpoint_tree()


def test_the_paper_method_leaves_the_encoder_out():
  config = tiny_config(momentum_encoder=0.99)
  assert default.paper_method(config).train.momentum_encoder == 0.0


def test_a_workdir_without_the_encoder_is_not_resumed_with_one(tmp_path):
  config = tiny_config()
  signature = checkpoint.model_signature(config, 1, 1797, 'digest')
  # Workdirs written before the field existed lack its key.
  del signature['momentum_encoder']
  checkpoint.write_model_signature(str(tmp_path), signature)
  checkpoint.check_model_signature(
      str(tmp_path), checkpoint.model_signature(config, 1, 1797, 'digest'))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'a momentum encoder \(train.momentum_encoder\): '
                     'False there, True now'):
    checkpoint.check_model_signature(str(tmp_path), checkpoint.model_signature(
        tiny_config(momentum_encoder=0.9), 1, 1797, 'digest'))


@pytest.mark.slow
def test_a_run_with_the_encoder_resumes_exactly(tmp_path):
  def config(epochs):
    return tiny_config(num_epochs=epochs, momentum_encoder=0.9)
  straight = workflows.build_trainer(config(2), str(tmp_path / 'a'))
  straight.train()
  first = workflows.build_trainer(config(1), str(tmp_path / 'b'))
  first.train()
  first.close()
  resumed = workflows.build_trainer(config(2), str(tmp_path / 'b'))
  assert resumed.restore_latest() and int(resumed.state.step) == 7
  np.testing.assert_array_equal(
      jax.tree.leaves(resumed.run.momentum_params)[0],
      jax.tree.leaves(first.run.momentum_params)[0])
  resumed.train()
  for name in ('params', 'momentum_params'):
    for a, b in zip(*(jax.tree.leaves(
        t.run.momentum_params if name == 'momentum_params' else
        t.state.params) for t in (straight, resumed))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  straight.close()
  resumed.close()
