"""jcc.train end to end on the embedded digits, plus the step's pieces."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcc import errors
from jcc import models
from jcc import objective
from jcc import optimizer
from jcc import parallel
from jcc import plan
from jcc import signals
from jcc import step
from jcc import validate
from jcc import workflows
from tests.conftest import REPO_ROOT, tiny_config


def test_zero_weight_removes_the_term():
  config = tiny_config()
  config.loss.kl = 0.0
  config.loss.reconstruction = 0.0
  model = models.build_model(config, channels=1)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 8, 8, 1)))
  variables = model.init(jax.random.key(0), x)
  outputs = model.apply(variables, x, decode=False)
  terms = objective.compute_loss_terms(
      outputs, x, jnp.full((4, 10), 0.1), config.loss)
  assert set(terms) == {'instance', 'cluster', 'entropy'}
  assert all(np.isfinite(v) for v in terms.values())


@pytest.mark.parametrize('warmup_terms', ['all', 'instance'])
def test_the_warm_up_trains_the_terms_it_names(warmup_terms):
  config = tiny_config(batch_size=64, warmup_terms=warmup_terms)
  model = models.build_model(config, channels=1)
  tx = optimizer.make_optimizer(config.train, 1e-3)
  mesh = parallel.make_mesh(jax.devices()[:1])
  replicated, _ = parallel.shardings(mesh)
  state = step.create_train_state(model, tx, jax.random.key(0), (8, 8, 1))
  target = np.full((64, 10), 0.1, np.float32)
  run = jax.tree.map(lambda x: parallel.to_global(np.asarray(x), replicated),
                     step.RunState(train=state, target=target))
  images = np.random.default_rng(0).integers(0, 255, (64, 8, 8, 1), np.uint8)
  batch = jax.tree.map(parallel.to_global, step.Batch(
      images=images, indices=np.arange(64, dtype=np.int32)),
                       step.batch_shardings(mesh))
  train_step = step.make_train_step(model, tx, config, mesh, warmup_steps=1)
  weights = config.loss
  for in_warmup in (True, False):
    run, metrics = jax.device_get(train_step(run, batch))
    counted = [name for name in ('instance', 'cluster', 'entropy',
                                 'reconstruction', 'kl')
               if not in_warmup or name == 'instance' or (
                   warmup_terms == 'all' and name != 'kl')]
    np.testing.assert_allclose(
        metrics['total'], sum(weights[n] * metrics[n] for n in counted),
        rtol=1e-5)


def test_config_errors_name_the_field():
  config = tiny_config()
  config.dataset.num_clusters = 1
  with pytest.raises(errors.ConfigError, match='num_clusters=1'):
    validate.check_fields(config)
  config.dataset.num_clusters = 10
  with pytest.raises(errors.ConfigError, match='divide over the 8 devices'):
    validate.check_against_data(tiny_config(batch_size=100), 1000, 8)
  with pytest.raises(errors.ConfigError, match='exceeds the 50 examples'):
    validate.check_against_data(config, 50, 1)


def test_train_evaluate_and_resume(trained_copy):
  # 2 epochs of 7 steps: warm-up (7), centroid init at step 7, joint (7).
  workdir = str(trained_copy)
  results_file = os.path.join(workdir, 'results.json')
  with open(results_file) as f:
    first = json.load(f)
  # A finished run is evaluated again, not retrained: the same figures.
  results = workflows.train_and_evaluate(tiny_config(), workdir).results
  with open(results_file) as f:
    on_disk = json.load(f)
  assert on_disk == results
  without_time = lambda r: {k: v for k, v in r.items() if k != 'seconds'}  # noqa: E731
  assert without_time(on_disk) == without_time(first)
  assert on_disk['dataset'] == 'digits'
  assert on_disk['num_examples'] == 1797 and on_disk['num_clusters'] == 10
  assert on_disk['seconds'] > 0
  for name in ('cluster_head', 'dec', 'kmeans'):
    assert set(on_disk[name]) == {'acc', 'nmi', 'ari'}
    assert 0.1 <= on_disk[name]['acc'] <= 1.0

  # Resuming with more epochs continues at the saved step.
  trainer = workflows.build_trainer(tiny_config(num_epochs=3), workdir)
  try:
    assert trainer.restore_latest()
    assert int(trainer.state.step) == 14
    saved_centroids = np.asarray(
        trainer.state.params['clustering']['centroids'])
    trainer.train()
    assert int(trainer.state.step) == 21
    assert max(map(int, os.listdir(os.path.join(workdir, 'checkpoints')))) == 21
    # No second centroid initialisation: the joint phase just went on.
    assert not np.allclose(
        trainer.state.params['clustering']['centroids'], saved_centroids,
        atol=0)
  finally:
    trainer.close()


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
  straight = workflows.build_trainer(tiny_config(), str(tmp_path / 'a'))
  straight.train()
  first = workflows.build_trainer(tiny_config(num_epochs=1), str(tmp_path / 'b'))
  first.train()
  first.close()
  resumed = workflows.build_trainer(tiny_config(), str(tmp_path / 'b'))
  assert resumed.restore_latest()
  resumed.train()
  leaves = zip(jax.tree.leaves(straight.state.params),
               jax.tree.leaves(resumed.state.params))
  for a, b in leaves:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(straight.run.target, resumed.run.target,
                             atol=1e-6)
  straight.close()
  resumed.close()


CLI_RUN = ['--config=configs/digits.py', '--config.dataset.image_size=8',
           '--config.train.num_epochs=1', '--config.train.warmup_epochs=0',
           '--config.train.kmeans_n_init=2',
           '--config.model.convnet_widths=(8,16)', '--config.train.min_steps=0']


def _command_line(workdir, *flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # jcc's own choice of CPU devices, as a user's
  return subprocess.run(
      [sys.executable, '-m', 'jcc.main', f'--workdir={workdir}', *CLI_RUN,
       *flags], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
      timeout=600)


def test_command_line_trains_and_evaluates(tmp_path):
  # The fast tier's one real `python -m jcc.main` run.
  proc = _command_line(tmp_path / 'cli')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'cluster_head' in proc.stdout and 'kmeans' in proc.stdout
  assert 'img/s' in proc.stderr and 'ETA' in proc.stderr
  per_core = parallel.default_cpu_device_count(256, parallel.available_cores())
  assert f'convnet, {per_core} devices,' in proc.stderr  # one per core
  assert (tmp_path / 'cli' / 'results.json').is_file()


@pytest.mark.slow
def test_command_line_evaluates_a_trained_workdir(tmp_path):
  assert _command_line(tmp_path / 'cli').returncode == 0
  evaluated = _command_line(tmp_path / 'cli', '--mode=evaluate')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'Training' not in evaluated.stderr
  assert 'cluster_head' in evaluated.stdout


@pytest.mark.parametrize('field,value', [
    ('max_checkpoints', 0), ('learning_rate', float('nan')),
    ('learning_rate', -1e-3), ('learning_rate', 0.0)])
def test_settings_that_would_lose_the_model_are_refused(field, value):
  # max_checkpoints=0 would finish with an empty checkpoints/; a NaN
  # learning rate would write NaN parameters.
  with pytest.raises(errors.ConfigError, match=f'config.train.{field}='):
    validate.check_fields(tiny_config(**{field: value}))


def test_a_step_that_cannot_fit_in_memory_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(parallel, 'memory_per_device', lambda: 2**20)  # 1 MiB
  trainer = workflows.build_trainer(tiny_config(), str(tmp_path))
  try:
    with pytest.raises(errors.ConfigError, match=(
        r'batch_size=256 with config.dataset.image_size=8 needs about '
        r'[0-9.]+ GiB per device for a step, more than the 0.0 GiB')):
      trainer.train()
    assert int(trainer.state.step) == 0  # refused before any step
  finally:
    trainer.close()


@pytest.mark.slow
def test_the_command_line_refuses_a_step_no_machine_can_hold(tmp_path):
  # 512 is the largest image size the config check allows, and batch 1024
  # of it needs hundreds of GB: refused before any allocation.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  run = subprocess.run(
      [sys.executable, '-m', 'jcc.main', '--config=configs/digits.py',
       f'--workdir={tmp_path}', '--config.dataset.image_size=512',
       '--config.train.batch_size=1024'], cwd=REPO_ROOT, env=env,
      capture_output=True, text=True, timeout=600)
  assert run.returncode == 2, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('jcc: error: config.train.batch_size=1024 with '
                         'config.dataset.image_size=512 needs about'), last


def test_a_hangup_stops_a_run_as_sigterm_does():
  # Closing the terminal or losing an SSH connection sends SIGHUP.
  got = []
  with signals.on_stop_signals(lambda signum, frame: got.append(signum)):
    os.kill(os.getpid(), signal.SIGHUP)
  assert got == [signal.SIGHUP]


def test_is_time_for_periodic_actions():
  due = lambda **kw: [s for s in range(13) if plan.is_time(s, **kw)]
  assert due(every=5) == [0, 5, 10]
  assert due(every=5, last=12) == [0, 5, 10, 12]
  assert due(every=0) == [] and due(every=0, last=12) == [12]
  assert due(every=4, start=3) == [3, 7, 11]  # the P refresh after warm-up


@pytest.mark.slow
def test_cosine_run_logs_the_decaying_learning_rate(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(lr_schedule='cosine', learning_rate=1e-3,
                       num_epochs=2, warmup_epochs=1)
  workflows.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  rates = [(r['step'], r['learning_rate']) for r in logged
           if 'learning_rate' in r]
  # log_every_steps=1, 2 epochs of 7 steps (the compiling first step is not
  # timed, so not logged).
  assert [step for step, _ in rates] == list(range(2, 15))
  # Each is the rate the step used: step s ran with the schedule at s − 1.
  schedule = optimizer.learning_rate_schedule(config.train, 14)
  np.testing.assert_allclose([v for _, v in rates],
                             [float(schedule(s - 1)) for s, _ in rates],
                             rtol=1e-6)
  assert rates[0][1] > 0.9e-3 and rates[-1][1] < 0.02e-3


def test_min_steps_factor_is_the_smallest_whole_multiple():
  assert plan.min_steps_factor(14, 0) == 1
  assert plan.min_steps_factor(14, 14) == 1
  assert plan.min_steps_factor(14, 15) == 2
  assert plan.min_steps_factor(220, 1000) == 5


def test_a_small_dataset_trains_at_least_min_steps(tmp_path, caplog):
  # digits at batch 256: 7 steps an epoch, so 2 epochs are 14 < 30 steps;
  # every epoch count is tripled, the warm-up's share unchanged.
  config = tiny_config(num_epochs=2, warmup_epochs=1, selflabel_epochs=1,
                       min_steps=30)
  said = 'under train.min_steps=30: training 6 epochs (warm-up 3) instead'
  with caplog.at_level('INFO'):
    trainer = workflows.build_trainer(config, str(tmp_path))
  trainer.close()
  assert trainer.plan.epoch_factor == 3
  assert (trainer.plan.warmup_steps, trainer.plan.joint_end,
          trainer.plan.total_steps) == (21, 42, 63)
  assert said in caplog.text
  # An evaluation counts the same steps but trains none: it does not say so.
  caplog.clear()
  with caplog.at_level('INFO'):
    trainer = workflows.build_trainer(config, str(tmp_path), 'evaluate')
  trainer.close()
  assert trainer.plan.total_steps == 63
  assert 'min_steps' not in caplog.text


def test_a_resume_with_other_training_settings_is_refused(trained_copy):
  results = (trained_copy / 'results.json').read_bytes()
  saved = json.loads((trained_copy / 'config.json').read_text())
  assert saved['train']['checkpoint_every_steps'] == 7
  changed = tiny_config(batch_size=128, learning_rate=2e-3)
  with pytest.raises(errors.ConfigError) as error:
    workflows.train_and_evaluate(changed, str(trained_copy))
  message = str(error.value)
  assert 'train.batch_size: 256 there, 128 now' in message
  assert 'train.learning_rate: 0.001 there, 0.002 now' in message
  assert 'another --workdir' in message and (
      'accept_changed_settings=True') in message
  # Nothing retrained, nothing rewritten.
  assert (trained_copy / 'results.json').read_bytes() == results


def test_a_resume_may_change_intervals_and_epochs(trained_copy, caplog):
  config = tiny_config(num_epochs=3, log_every_steps=5,
                       checkpoint_every_steps=100)
  with caplog.at_level('INFO'):
    trainer = workflows.build_trainer(config, str(trained_copy))
  try:
    assert 'Resuming with train.num_epochs=3 (the run had 2)' in caplog.text
  finally:
    trainer.close()
  accepted = tiny_config(learning_rate=2e-3, accept_changed_settings=True)
  with caplog.at_level('WARNING'):
    trainer = workflows.build_trainer(accepted, str(trained_copy))
    trainer.restore_latest()
    trainer.save(force=True)  # the new settings are the run's from now on
    trainer.close()
  assert 'train.learning_rate: 0.001 there, 0.002 now' in caplog.text
  saved = json.loads((trained_copy / 'config.json').read_text())
  assert saved['train']['learning_rate'] == 2e-3


def test_the_plan_turns_every_epoch_count_into_steps_once():
  # digits at batch 256: 7 steps an epoch.
  p = plan.plan_run(tiny_config(num_epochs=4, warmup_epochs=1,
                                selflabel_epochs=2).train, 1797)
  assert (p.steps_per_epoch, p.epoch_factor) == (7, 1)
  assert (p.warmup_steps, p.joint_end, p.total_steps) == (7, 28, 42)
  # A warm-up longer than the run ends with it.
  p = plan.plan_run(tiny_config(num_epochs=1, warmup_epochs=3).train, 1797)
  assert (p.warmup_steps, p.joint_end, p.total_steps) == (7, 7, 7)


def test_a_field_one_version_lacks_is_not_compared_on_resume(trained_copy):
  # config.json of another version of jcc: an extra field, one missing.
  path = trained_copy / 'config.json'
  saved = json.loads(path.read_text())
  saved['train']['a_field_of_another_version'] = 1
  del saved['train']['kmeans_n_init']
  path.write_text(json.dumps(saved))
  trainer = workflows.build_trainer(
      tiny_config(checkpoint_every_steps=7), str(trained_copy))
  trainer.close()


def test_the_non_finite_flags_keep_their_bits_as_terms_are_added():
  # The bits that checkpoints already hold: entry i is bit i. A new term
  # goes at the end, never between them.
  recorded = ('instance', 'cluster', 'entropy', 'reconstruction', 'kl',
              'total or gradient', 'update', 'neighbor_consistency',
              'neighbor_instance', 'self_labeling')
  assert step.FINITE_CHECKS[:len(recorded)] == recorded
  assert set(step.FINITE_CHECKS) == set(step.TERMS) | {'total or gradient',
                                                       'update'}
  assert step.nonfinite_names(0b100001) == ['instance', 'total or gradient']
