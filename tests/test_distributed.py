"""Several processes as one run, on one machine, as docs/multihost.md says.

Two processes with two CPU devices each talk over 127.0.0.1 with gloo, as
hosts of a cluster would; they are compared with one process of four
devices, stopped, killed, frozen and given different configs.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jcc import distributed
from jcc import kmeans
from tests import readme
from tests.conftest import REPO_ROOT, tiny_config
from tests.test_reliability import (TINY_FLAGS, _digits_as_files, _steps,
                                    _truncate_data_files)

# Warm-up (7 steps), k-means, then joint training with P refreshes: 21 steps.
# Without digits' rotation and shear: the joint phase's drift bounds below
# were measured on this run, and a different augmentation takes the short
# run's rounding elsewhere (ACC 19 images apart instead of at most 2).
RUN = ['--config.train.num_epochs=3', '--config.train.warmup_epochs=1',
       '--config.train.checkpoint_every_steps=5',
       '--config.augment.rotation=0.0', '--config.augment.shear=0.0']
LAST_STEP = 21
WARMUP_END = 7


# ---------------------------------------------------------------------------
# The pieces, in process.


def test_only_per_process_fields_may_differ_in_the_fingerprint(tmp_path):
  config = tiny_config()
  same = tiny_config()
  same.distributed.process_id = 1
  same.distributed.coordinator_address = '10.0.0.1:1234'
  assert distributed.fingerprint(config) == distributed.fingerprint(same)
  other = tiny_config()
  other.seed = 1
  assert distributed.fingerprint(config) != distributed.fingerprint(other)
  # Another version of the code: one changed source file.
  package = tmp_path / 'jcc'
  shutil.copytree(REPO_ROOT / 'jcc', package)
  assert (distributed.fingerprint(config, package=package) ==
          distributed.fingerprint(config))
  with open(package / 'losses.py', 'a') as f:
    f.write('\n# a local change\n')
  assert (distributed.fingerprint(config, package=package) !=
          distributed.fingerprint(config))
  # Other data under the same config (a host's copy of a folder).
  assert (distributed.fingerprint(config, (1797, 8, 8, 1)) !=
          distributed.fingerprint(config, (1796, 8, 8, 1)))


def test_one_process_unless_the_config_or_environment_asks(monkeypatch):
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS', raising=False)
  config = tiny_config()
  assert not distributed.is_requested(config)
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  assert distributed.is_requested(config)
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS')
  config.distributed.coordinator_address = 'auto'
  assert distributed.is_requested(config)
  # 'auto' and unset fields are left to JAX's detection.
  arguments = distributed.initialize_arguments(config)
  assert not {'coordinator_address', 'num_processes',
              'process_id'} & set(arguments)
  config.distributed.coordinator_address = '10.0.0.1:1234'
  config.distributed.num_processes = 4
  config.distributed.process_id = 3
  config.distributed.peer_timeout_seconds = 20
  arguments = distributed.initialize_arguments(config)
  assert arguments['coordinator_address'] == '10.0.0.1:1234'
  assert (arguments['num_processes'], arguments['process_id']) == (4, 3)
  # JAX's own heartbeat must not end the process before the peer watch.
  assert arguments['heartbeat_timeout_seconds'] > 20


def test_a_failed_collective_is_told_from_other_runtime_errors():
  lost = jax.errors.JaxRuntimeError(
      'UNKNOWN: Gloo all-reduce failed: [pair.cc:538] Read error '
      '[127.0.0.1]:6044: Connection reset by peer')
  assert distributed.is_peer_failure(lost)
  assert not distributed.is_peer_failure(
      jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: out of memory'))
  assert not distributed.is_peer_failure(ValueError('connection reset'))


def test_one_process_agrees_with_itself():
  config = tiny_config()
  distributed.check_same_run(config, (10, 8, 8, 1))  # nobody to compare
  assert distributed.any_process(True) and not distributed.any_process(False)
  x = np.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(distributed.sum_over_processes(x), x)


def test_rows_at_chosen_indices_come_from_whichever_process_holds_them():
  whole = np.arange(40.0).reshape(20, 2)
  chosen = np.array([0, 3, 4, 11, 19])
  shares = [np.arange(20)[8:], np.arange(20)[:8][::-1], np.arange(0)]
  parts = [distributed.rows_at(chosen, whole[rows], rows, lambda a: a)
           for rows in shares]
  np.testing.assert_array_equal(sum(parts), whole[chosen])
  np.testing.assert_array_equal(parts[2], np.zeros((5, 2)))
  assert distributed.rows_at(chosen[:0], whole, np.arange(20)).shape == (0, 2)


# ---------------------------------------------------------------------------
# Real processes, launched as docs/multihost.md's recipe launches them.


# Each process fits k-means on its rows of an eval-batch split and writes
# the centroids and a float64 sum over processes (jcc.kmeans, in process).
_KMEANS_SHARE = """
import sys
import numpy as np
from jcc import distributed, kmeans, pipeline
from tests.conftest import tiny_config
config = tiny_config()
config.distributed.coordinator_address = '127.0.0.1:' + sys.argv[1]
config.distributed.num_processes = 2
config.distributed.process_id = int(sys.argv[2])
distributed.initialize(config)
rows = np.load(sys.argv[3])
mine = pipeline.process_rows(len(rows), 64, int(sys.argv[2]), 2)
centroids = kmeans.fit(rows[mine], mine, len(rows), 6, seed=1, n_init=2,
                       sum_over_processes=distributed.sum_over_processes)
total = distributed.sum_over_processes(np.float64(1 + 2**-40) * (
    1 + int(sys.argv[2])))
np.savez(sys.argv[4], centroids=centroids, total=total)
distributed.finish()
"""


@pytest.mark.slow
def test_two_processes_fit_k_means_from_their_own_rows(tmp_path):
  rows = np.random.default_rng(0).normal(size=(301, 5)).astype(np.float32)
  np.save(tmp_path / 'rows.npy', rows)
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, '-c', _KMEANS_SHARE, port, str(i),
       str(tmp_path / 'rows.npy'), str(tmp_path / f'{i}.npz')],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
  got = [np.load(tmp_path / f'{i}.npz') for i in range(2)]
  # The same bits on both, float64 kept, and one process's centroids.
  np.testing.assert_array_equal(got[0]['centroids'], got[1]['centroids'])
  assert got[0]['total'] == got[1]['total'] == 3 * (1 + 2**-40)
  one = kmeans.fit(rows, np.arange(301), 301, 6, seed=1, n_init=2)
  np.testing.assert_allclose(got[0]['centroids'], one, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _compilation_cache(arm: str) -> dict:
  """The session's compilation cache (conftest), one folder per arm.

  JAX would otherwise hand the programs that one process compiled for its
  four devices to two processes of two devices each, and the comparison of
  the two would no longer be of what each compiles.
  """
  shared = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  return {} if shared is None else {
      'JAX_COMPILATION_CACHE_DIR': os.path.join(shared, arm)}


class Processes:
  """docs/multihost.md's one-machine recipe, started as N real processes."""

  def __init__(self, workdir, *flags, port=None, num_processes=2,
               per_process_flags=None, ids=None):
    env, argv = readme.multiprocess_recipe()
    port = port or _free_port()
    self.workdir = pathlib.Path(workdir)
    ids = range(num_processes) if ids is None else ids
    self.logs = [self.workdir.parent / f'{self.workdir.name}.{i}.log'
                 for i in ids]
    self.procs = []
    for n, i in enumerate(ids):
      command = [sys.executable if w == 'python' else
                 w.replace('$id', str(i)) for w in argv]
      command = [_set_flag(w, workdir, port, num_processes) for w in command]
      command += TINY_FLAGS + list(flags) + list(
          (per_process_flags or {}).get(i, []))
      full_env = dict(os.environ, **env, PYTHONUNBUFFERED='1',
                      **_compilation_cache(f'{num_processes}-processes'))
      with open(self.logs[n], 'w') as log:
        self.procs.append(subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env, stdout=log,
            stderr=subprocess.STDOUT, text=True))

  def wait(self, timeout=600) -> list[int]:
    deadline = time.time() + timeout
    try:
      return [p.wait(timeout=max(1, deadline - time.time()))
              for p in self.procs]
    finally:
      self.kill()

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def log(self, i: int) -> str:
    return self.logs[i].read_text()

  def wait_for_checkpoint(self, at_least: int, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
      if any(s >= at_least for s in _steps(self.workdir)):
        return
      for i, p in enumerate(self.procs):
        assert p.poll() is None, self.log(i)[-3000:]
      time.sleep(0.05)
    raise TimeoutError(f'no checkpoint >= {at_least} in {self.workdir}')


def _set_flag(word: str, workdir, port: int, num_processes: int) -> str:
  if word.startswith('--workdir='):
    return f'--workdir={workdir}'
  if word.startswith('--config.distributed.coordinator_address='):
    return f'--config.distributed.coordinator_address=127.0.0.1:{port}'
  if word.startswith('--config.distributed.num_processes='):
    return f'--config.distributed.num_processes={num_processes}'
  return word


def _one_process(workdir, *flags, devices=4):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      f'--xla_force_host_platform_device_count={devices}'),
             **_compilation_cache('1-process'))
  return subprocess.run(
      [sys.executable, '-m', 'jcc.main', '--config=configs/digits.py',
       f'--workdir={workdir}', *TINY_FLAGS, *flags], cwd=REPO_ROOT, env=env,
      capture_output=True, text=True, timeout=600)


def _losses(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items()
           if k.startswith('loss/') or k == 'step'} for line in lines
          if '"loss/total"' in line]


def _final_state(workdir):
  """The last checkpoint, read onto this process's first device."""
  path = (pathlib.Path(workdir) / 'checkpoints' / str(LAST_STEP) /
          'default').absolute()
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  like = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata)
  return jax.device_get(checkpointer.restore(path, like))


def _assert_same_run(got: dict, want: dict, scores_atol: float) -> None:
  """Equal results.json contents but for scores, which may move by atol."""
  assert got.keys() == want.keys()
  for key, value in want.items():
    if isinstance(value, dict):
      _assert_same_run(got[key], value, scores_atol)
    elif isinstance(value, float):
      assert abs(got[key] - value) <= scores_atol, (key, got[key], value)
    else:
      assert got[key] == value, key


def _results(workdir) -> dict:
  results = json.loads((pathlib.Path(workdir) / 'results.json').read_text())
  results.pop('seconds')
  return results


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_exactly(tmp_path):
  one = _one_process(tmp_path / 'one', *RUN)
  assert one.returncode == 0, one.stderr[-3000:]

  two = Processes(tmp_path / 'two', *RUN)
  assert two.wait() == [0, 0], two.log(0)[-3000:] + two.log(1)[-3000:]

  # The same losses at every logged step, parameters and metrics, up to
  # rounding. Two processes sum over the devices in another order than one
  # process does, and through Adam's normalised steps those last-bit
  # differences grow in the joint phase: one process on 2 devices and on 4
  # differs as much as these two runs (jaxlib 0.10.2: losses by up to 5e-5,
  # parameters by 1.6% of a layer's norm, ACC by 2 images, after 21 steps).
  # So the warm-up is held to float32 rounding, where a process that trained
  # on the wrong share of a batch or skipped a reduction would differ at
  # once; the joint phase's losses to 20x the measured drift, parameters to
  # 3x, scores to 0.01 (18 images). atol: the entropy term is log K minus an
  # entropy close to log K, so its rounding is a few ulps of log K, not
  # relative to its small value (CI saw 1.2e-6 at 1e-3).
  want, got = _losses(tmp_path / 'one'), _losses(tmp_path / 'two')
  assert [r['step'] for r in got] == [r['step'] for r in want]
  assert len(got) == LAST_STEP - 1  # every step but the compiling one
  for a, b in zip(want, got):
    for key in a:
      np.testing.assert_allclose(
          b[key], a[key], rtol=1e-5 if a['step'] <= WARMUP_END else 1e-3,
          atol=1e-5, err_msg=f'{key} at step {a["step"]}')
  params = [_final_state(tmp_path / w)['state']['params']
            for w in ('one', 'two')]
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params[0]),
                          jax.tree.leaves(params[1])):
    assert np.linalg.norm(b - a) <= 0.05 * np.linalg.norm(a), path
  _assert_same_run(_results(tmp_path / 'two'), _results(tmp_path / 'one'),
                   scores_atol=0.01)

  # Process 0 reports and writes; process 1 is quiet apart from warnings.
  lead, other = two.log(0), two.log(1)
  assert 'img/s' in lead and 'assignment' in lead
  assert 'img/s' not in other and 'assignment' not in other
  assert (tmp_path / 'two' / 'model.json').exists()
  assert (tmp_path / 'two' / 'report').is_dir()
  # Each process wrote its own rows of the report's embeddings into one
  # file: every row is there, pointing where the one-process run's does.
  one_rows, two_rows = (np.load(tmp_path / w / 'report' / 'embeddings.npy')
                        for w in ('one', 'two'))
  assert two_rows.shape == one_rows.shape
  cosine = np.sum(one_rows * two_rows, 1) / (
      np.linalg.norm(one_rows, axis=1) * np.linalg.norm(two_rows, axis=1))
  assert cosine.min() > 0.99
  assert sorted(p.name for p in (tmp_path / 'two' / 'report').iterdir()) == (
      sorted(p.name for p in (tmp_path / 'one' / 'report').iterdir()))

  # A stop signal to one process stops both, at one checkpoint; the same
  # commands then end exactly as the uninterrupted run.
  stopped = Processes(tmp_path / 'stopped', *RUN)
  stopped.wait_for_checkpoint(5)
  stopped.procs[1].send_signal(signal.SIGTERM)
  assert stopped.wait(timeout=120) == [0, 0], stopped.log(0)[-3000:]
  assert 'the same command resumes' in stopped.log(0)
  steps = _steps(tmp_path / 'stopped')
  assert 5 < max(steps) < LAST_STEP, steps
  assert not (tmp_path / 'stopped' / 'results.json').exists()
  resumed = Processes(tmp_path / 'stopped', *RUN)
  assert resumed.wait() == [0, 0], resumed.log(0)[-3000:]
  assert f'Resumed from the checkpoint of step {max(steps)}' in resumed.log(0)
  for a, b in zip(jax.tree.leaves(_final_state(tmp_path / 'two')),
                  jax.tree.leaves(_final_state(tmp_path / 'stopped'))):
    np.testing.assert_array_equal(b, a)
  assert _results(tmp_path / 'stopped') == _results(tmp_path / 'two')

  # A last checkpoint that cannot be read: process 0 sets it aside on the
  # shared workdir (one mover: a second would find it gone and crash), and
  # both resume from the one before and end as before.
  before = sorted(_steps(tmp_path / 'stopped'))[-2]
  _truncate_data_files(tmp_path / 'stopped' / 'checkpoints' / str(LAST_STEP))
  damaged = Processes(tmp_path / 'stopped', *RUN)
  assert damaged.wait() == [0, 0], damaged.log(0)[-3000:] + damaged.log(1)[
      -3000:]
  assert f'Resumed from the checkpoint of step {before}' in damaged.log(0)
  assert len(list((tmp_path / 'stopped' / 'damaged_checkpoints').iterdir())
             ) == 1
  for a, b in zip(jax.tree.leaves(_final_state(tmp_path / 'two')),
                  jax.tree.leaves(_final_state(tmp_path / 'stopped'))):
    np.testing.assert_array_equal(b, a)
  assert _results(tmp_path / 'stopped') == _results(tmp_path / 'two')


@pytest.mark.slow
def test_two_processes_streamed_resume_exactly_after_a_kill(tmp_path):
  # Each process reads its own rows of each batch from the files; one is
  # killed, the other stops, and the same commands end as an uninterrupted
  # streamed run and as the same images held in memory.
  folder = ['--config.dataset.name=folder',
            f'--config.dataset.path={_digits_as_files(tmp_path / "digits")}']
  stream = folder + ['--config.dataset.stream=True']
  straight = Processes(tmp_path / 'straight', *RUN, *stream)
  assert straight.wait() == [0, 0], straight.log(0)[-3000:]
  held = Processes(tmp_path / 'held', *RUN, *folder)
  assert held.wait() == [0, 0], held.log(0)[-3000:]
  assert _results(tmp_path / 'held') == _results(tmp_path / 'straight')

  killed = Processes(tmp_path / 'killed', *RUN, *stream,
                     '--config.train.checkpoint_every_steps=5')
  killed.wait_for_checkpoint(5)
  killed.procs[1].send_signal(signal.SIGKILL)
  killed.procs[0].wait(timeout=120)
  killed.kill()
  steps = _steps(tmp_path / 'killed')
  assert max(steps) < LAST_STEP, steps
  resumed = Processes(tmp_path / 'killed', *RUN, *stream)
  assert resumed.wait() == [0, 0], resumed.log(0)[-3000:]
  assert f'Resumed from the checkpoint of step {max(steps)}' in resumed.log(0)
  for a, b in zip(jax.tree.leaves(_final_state(tmp_path / 'straight')),
                  jax.tree.leaves(_final_state(tmp_path / 'killed'))):
    np.testing.assert_array_equal(b, a)
  assert _results(tmp_path / 'killed') == _results(tmp_path / 'straight')


LONG_RUN = ['--config.train.num_epochs=1000', '--config.train.warmup_epochs=1',
            '--config.train.checkpoint_every_steps=5',
            '--config.distributed.peer_timeout_seconds=5']


@pytest.mark.slow
@pytest.mark.parametrize('how', ['SIGKILL', 'SIGSTOP'])
def test_a_lost_process_stops_the_other_in_one_line_and_both_resume(
    tmp_path, how):
  # SIGKILL: the other's next collective fails at once. SIGSTOP (a frozen
  # host): its collectives would wait for ever; the heartbeat ends them.
  run = Processes(tmp_path / 'run', *LONG_RUN)
  run.wait_for_checkpoint(10)
  lost = time.time()
  run.procs[1].send_signal(getattr(signal, how))
  status = run.procs[0].wait(timeout=120)
  assert time.time() - lost < 60
  run.kill()
  log = run.log(0)
  assert status == distributed.EXIT_PEER_LOST, log[-3000:]
  errors = [line for line in log.splitlines() if line.startswith('jcc:')]
  assert len(errors) == 1 and errors[0].startswith('jcc: error: lost a peer')
  assert 'Traceback' not in log
  if how == 'SIGSTOP':
    assert 'process 1 sent no heartbeat for 5 s' in errors[0]
    return  # the resume below is the same for both
  last = max(_steps(tmp_path / 'run'))

  again = Processes(tmp_path / 'run', *LONG_RUN,
                    '--config.train.num_epochs=4')  # 28 steps: to the end
  assert again.wait() == [0, 0], again.log(0)[-3000:]
  assert f'Resumed from the checkpoint of step {last}' in again.log(0)
  assert _results(tmp_path / 'run')['cluster_head']


@pytest.mark.slow
def test_losing_process_zero_ends_the_others_without_a_hang(tmp_path):
  # Process 0 holds JAX's coordination service. Whichever notices first
  # ends the others: JAX itself, or the heartbeat (or a failed collective)
  # with jcc's one line. CI has seen both.
  run = Processes(tmp_path / 'run', *LONG_RUN)
  run.wait_for_checkpoint(10)
  lost = time.time()
  run.procs[0].send_signal(signal.SIGKILL)
  status = run.procs[1].wait(timeout=120)
  assert time.time() - lost < 60
  run.kill()
  log = run.log(1)
  if 'distributed service detected fatal errors' in log:
    assert status != 0, log[-3000:]
  else:
    errors = [line for line in log.splitlines() if line.startswith('jcc:')]
    assert status == distributed.EXIT_PEER_LOST, log[-3000:]
    assert len(errors) == 1 and errors[0].startswith('jcc: error: lost a peer')
    assert 'Traceback' not in log


@pytest.mark.slow
def test_processes_with_different_configs_refuse_to_run(tmp_path):
  run = Processes(tmp_path / 'run', *RUN,
                  per_process_flags={1: ['--config.seed=1']})
  assert run.wait(timeout=300) == [2, 2], run.log(0)[-3000:]
  for i in range(2):
    errors = [l for l in run.log(i).splitlines() if l.startswith('jcc:')]
    assert len(errors) == 1, run.log(i)[-3000:]
    assert 'process 1 of 2 runs another config, other data' in errors[0]
  assert not _steps(tmp_path / 'run')


@pytest.mark.slow
def test_a_process_whose_coordinator_never_answers_says_so(tmp_path):
  # Only process 1: nobody serves the address.
  run = Processes(tmp_path / 'run',
                  '--config.distributed.initialization_timeout_seconds=2',
                  ids=[1])
  assert run.wait(timeout=120) == [2], run.log(0)[-3000:]
  log = run.log(0)
  assert 'jcc: error: nothing answers at' in log
  assert 'Traceback' not in log


@pytest.mark.slow
def test_a_process_id_beyond_the_count_is_refused_before_joining(tmp_path):
  run = Processes(tmp_path / 'run', '--config.distributed.process_id=2',
                  num_processes=1)
  assert run.wait(timeout=120) == [2]
  assert 'process_id=2 is not below' in run.log(0)
