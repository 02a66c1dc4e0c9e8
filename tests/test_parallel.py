"""Data parallelism: several fake CPU devices give what 1 device gives (2 in
the fast tier, 8 in the slow one)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcc import errors
from jcc import inference
from jcc import models
from jcc import parallel
from jcc import sources
from jcc import step
from jcc import validate
from tests.conftest import REPO_ROOT, SHARDED_DEVICES, devices, tiny_config

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module', params=SHARDED_DEVICES)
def meshes(request):
  """(a mesh of 1 device, a mesh of request.param devices)."""
  return (parallel.make_mesh(devices(1)),
          parallel.make_mesh(devices(request.param)))


def _setup(config):
  dataset = sources.load_dataset(config.dataset)
  model = models.build_model(config, dataset.channels)
  tx = optax.adam(config.train.learning_rate)
  state = step.create_train_state(
      model, tx, jax.random.key(0), dataset.images.shape[1:])
  indices = np.arange(64, dtype=np.int32)
  # Rows for 8 devices: padded_rows of any mesh of these tests.
  target = np.random.default_rng(0).dirichlet(
      np.ones(10), size=-(-len(dataset) // 8) * 8).astype(np.float32)
  return dataset, model, tx, state, indices, target


def _place(mesh, state, target, images, indices):
  """(run, batch) as the step takes them, placed on ``mesh``."""
  replicated, rows = parallel.shardings(mesh)
  run = step.RunState(
      train=jax.tree.map(lambda x: parallel.to_global(np.asarray(x),
                                                      replicated), state),
      target=parallel.to_global(target, rows))
  batch = jax.tree.map(parallel.to_global, step.Batch(
      images=images, indices=indices), step.batch_shardings(mesh))
  return run, batch


def test_one_step_on_several_devices_equals_1_device(meshes):
  config = tiny_config(batch_size=64)
  dataset, model, tx, state, indices, target = _setup(config)
  images = dataset.images[indices]
  results = []
  for mesh in meshes:
    train_step = step.make_train_step(model, tx, config, mesh)
    placed = _place(mesh, state, target, images, indices)
    new_run, metrics = train_step(*placed)
    results.append(jax.device_get((new_run.train, metrics)))
  (state_1, metrics_1), (state_n, metrics_n) = results
  assert set(metrics_1) == {'instance', 'cluster', 'entropy',
                            'reconstruction', 'kl', 'total'}
  for name in metrics_1:
    np.testing.assert_allclose(metrics_n[name], metrics_1[name], **TOL)
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_n)):
    np.testing.assert_allclose(b, a, **TOL)
  # The step did change the parameters (the comparison is not vacuous).
  before = jax.tree.leaves(state.params)
  after = jax.tree.leaves(state_1.params)
  assert any(not np.allclose(x, y) for x, y in zip(before, after))


def test_evaluation_on_several_devices_equals_1_device(meshes):
  config = tiny_config()
  dataset, model, _, state, _, _ = _setup(config)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  outputs = []
  for mesh in meshes:
    forward = inference.make_forward(model, mesh)
    replicated, batch = parallel.shardings(mesh)
    out = jax.device_get(forward(
        jax.tree.map(lambda x: parallel.to_global(
            np.asarray(x), replicated), variables),
        parallel.to_global(dataset.images[:512], batch)))
    outputs.append(out)
  np.testing.assert_array_equal(outputs[0]['cluster_probs'].argmax(1),
                                outputs[1]['cluster_probs'].argmax(1))
  np.testing.assert_array_equal(outputs[0]['student_t'].argmax(1),
                                outputs[1]['student_t'].argmax(1))
  np.testing.assert_allclose(outputs[0]['embedding'], outputs[1]['embedding'],
                             **TOL)


def test_a_process_own_rows_are_the_whole_outputs_split_by_rows(meshes):
  config = tiny_config()
  dataset, model, _, state, _, _ = _setup(config)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  images = dataset.images[:203]  # the last batch padded
  predictor = inference.Predictor(model, meshes[1], batch_size=64)
  whole = predictor(variables, images)
  own, rows = predictor.own_rows(variables, images)
  np.testing.assert_array_equal(rows, np.arange(203))
  for key, value in whole.items():
    np.testing.assert_array_equal(own[key], value)


def test_dec_target_is_split_by_rows_over_the_devices(meshes):
  config = tiny_config()
  dataset, model, tx, _, _, _ = _setup(config)
  mesh, n = meshes[1], len(dataset)
  clustered = np.arange(n) % 3 > 0  # a third instance-only
  run = step.init_run_state(model, tx, config, dataset.images.shape[1:],
                            mesh, clustered)
  rows = parallel.padded_rows(n, mesh)
  assert rows % mesh.size == 0 and n <= rows < n + mesh.size
  # Each device holds its share of the rows, not the whole table.
  assert [shard.data.shape for shard in run.target.addressable_shards] == [
      (rows // mesh.size, 10)] * mesh.size
  expected = np.zeros((rows, 10), np.float32)
  expected[:n][clustered] = 0.1
  np.testing.assert_array_equal(np.asarray(run.target), expected)


def test_set_rows_writes_each_row_on_the_device_that_holds_it(meshes):
  mesh = meshes[1]
  size = mesh.size
  table = parallel.row_table((3 * size, 4), mesh,
                             lambda part: np.zeros((3, 4), np.float32))
  rows = np.random.default_rng(0).permutation(3 * size)[:2 * size + 1]
  values = np.random.default_rng(1).random((len(rows), 4), np.float32)
  written = parallel.set_rows(table, rows.astype(np.int32), values,
                              per_process=size, num_chunks=3)
  expected = np.zeros((3 * size, 4), np.float32)
  expected[rows] = values
  np.testing.assert_array_equal(np.asarray(written), expected)
  assert written.sharding.is_equivalent_to(parallel.shardings(mesh).batch,
                                           2)


def test_train_step_makes_no_hidden_transfers(meshes):
  # Every argument is placed explicitly, as the trainer does; the step and
  # its outputs then stay on the devices: a hidden host<->device copy (a
  # NumPy argument, a value read back inside the step) fails here.
  config = tiny_config(batch_size=64)
  dataset, model, tx, state, indices, target = _setup(config)
  mesh = meshes[1]
  train_step = step.make_train_step(model, tx, config, mesh)
  placed = _place(mesh, state, target, dataset.images[indices], indices)
  with jax.transfer_guard('disallow'):
    new_run, _ = train_step(*placed)
    new_run, metrics = train_step(new_run, placed[1])
  assert int(jax.device_get(new_run.train.step)) == 2
  assert np.isfinite(jax.device_get(metrics['total']))


def test_a_non_finite_update_leaves_the_state_unchanged(meshes):
  # A NaN learning rate gives a finite loss and gradient but NaN parameters;
  # the step must refuse that update, as it does a non-finite loss.
  config = tiny_config(batch_size=64)
  dataset, model, _, state, indices, target = _setup(config)
  tx = optax.adam(float('nan'))
  state = state.replace(opt_state=tx.init(state.params))
  mesh = meshes[0]
  placed = _place(mesh, state, target, dataset.images[indices], indices)
  new_run, metrics = jax.device_get(
      step.make_train_step(model, tx, config, mesh)(*placed))
  new_state = new_run.train
  assert np.isfinite(metrics['total'])
  assert int(new_state.nonfinite_step) == 1
  assert step.nonfinite_names(new_state.nonfinite_terms) == ['update']
  for before, after in zip(jax.tree.leaves(state.params),
                           jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(after, before)


def test_bfloat16_compute_keeps_float32_parameters_and_losses(meshes):
  config = tiny_config(batch_size=64, compute_dtype='bfloat16')
  dataset, model, tx, state, indices, target = _setup(config)
  mesh = meshes[1]
  train_step = step.make_train_step(model, tx, config, mesh)
  placed = _place(mesh, state, target, dataset.images[indices], indices)
  new_run, metrics = jax.device_get(train_step(*placed))
  for leaf in jax.tree.leaves(new_run.train.params):
    assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
  for value in metrics.values():
    assert value.dtype == jnp.float32 and np.isfinite(value)


def test_unknown_compute_dtype_is_a_config_error():
  with pytest.raises(errors.ConfigError, match='compute_dtype'):
    validate.check_fields(tiny_config(compute_dtype='float16'))


def test_one_cpu_device_on_several_cores_gets_a_hint():
  cpu = jax.devices('cpu')
  hint = parallel.cpu_devices_hint(cpu[:1], 256, cores=2)
  assert 'JAX_NUM_CPU_DEVICES=2' in hint and 'docs/multihost.md' in hint
  assert parallel.cpu_devices_hint(cpu[:2], 256, cores=2) is None  # split
  assert parallel.cpu_devices_hint(cpu[:1], 256, cores=1) is None
  assert parallel.cpu_devices_hint(cpu[:1], 256, cores=3) is None  # 256 % 3


@pytest.mark.parametrize('batch,cores,count', [
    (256, 2, 2), (256, 1, 1), (256, 3, 2), (99, 2, 1), (256, 64, 8),
    (None, 3, 3), (None, 64, parallel.MAX_DEFAULT_CPU_DEVICES)])
def test_one_cpu_device_per_core_that_the_batch_divides_over(
    batch, cores, count):
  assert parallel.default_cpu_device_count(batch, cores) == count


_DEVICES_CHOSEN = """
import jax
from jcc import parallel
{before}
chosen = parallel.use_one_cpu_device_per_core(256)
print(chosen, jax.device_count('cpu'),
      parallel.default_cpu_device_count(256, parallel.available_cores()))
"""


@pytest.mark.parametrize('env,before,chosen_by_jcc', [
    ({}, '', True),
    ({'JAX_NUM_CPU_DEVICES': '1'}, '', False),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}, '', False),
    ({}, 'jax.devices()', False),  # JAX's devices exist already
])
def test_a_fresh_process_gets_one_cpu_device_per_core_unless_chosen(
    env, before, chosen_by_jcc):
  clean = {k: v for k, v in os.environ.items()
           if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  run = subprocess.run(
      [sys.executable, '-c', _DEVICES_CHOSEN.format(before=before)],
      env=dict(clean, JAX_PLATFORMS='cpu', **env), cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=120, check=True)
  chosen, count, per_core = run.stdout.split()
  if chosen_by_jcc:
    assert chosen == per_core == count
  else:
    assert (chosen, count) == ('None', '1')


@pytest.mark.parametrize('raised', [AssertionError(), RuntimeError(
    "Unable to initialize backend 'cuda': no CUDA plugin")])
def test_a_platform_jax_cannot_start_is_a_config_error(monkeypatch, raised):
  # JAX_PLATFORMS=cuda without jax's CUDA plugin fails on a bare assert in
  # JAX; tpu without a TPU with a RuntimeError: both one line.
  def fail():
    raise raised
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  monkeypatch.setattr(jax, 'devices', fail)
  with pytest.raises(errors.ConfigError,
                     match='JAX_PLATFORMS=cuda: JAX cannot use it'):
    parallel.check_platforms()
  monkeypatch.delenv('JAX_PLATFORMS')
  with pytest.raises(type(raised)):  # nothing asked for: JAX's own error
    parallel.check_platforms()
