"""Resume exactly, survive faults, refuse bad input clearly."""

import importlib.util
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from jcc import checkpoint
from jcc import evaluate
from jcc import parallel
from jcc import sources
from jcc import workflows
from jcc.checkpoint import WorkdirLock
from jcc.errors import CheckpointError, ConfigError, DataError
from tests import cli
from tests.conftest import REPO_ROOT, devices, tiny_config

# The command line with tiny_config()'s settings.
TINY_FLAGS = [
    '--config.dataset.image_size=8', '--config.model.convnet_widths=(8,16)',
    '--config.model.head_hidden=32', '--config.model.projection_dim=16',
    '--config.model.decoder_width=8', '--config.train.kmeans_n_init=2',
    '--config.train.target_update_every_steps=3',
    '--config.train.log_every_steps=1', '--config.train.min_steps=0',
]


def _cli(workdir, *flags_, wait=True):
  cmd = [sys.executable, '-m', 'jcc.main', '--config=configs/digits.py',
         f'--workdir={workdir}', *TINY_FLAGS, *flags_]
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def _steps(workdir):
  folder = pathlib.Path(workdir) / 'checkpoints'
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _wait_for_checkpoint(workdir, at_least, proc, timeout=300):
  start = time.time()
  while time.time() - start < timeout:
    if any(s >= at_least for s in _steps(workdir)):
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  raise TimeoutError(f'no checkpoint >= {at_least} in {workdir}')


def _params(workdir, step):
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'default'
  return ocp.StandardCheckpointer().restore(path.absolute())


# ---------------------------------------------------------------------------
# Exact resume and preemption, through the real command line.


def _digits_as_files(folder: pathlib.Path) -> pathlib.Path:
  """The bundled digits as PNG files in class folders."""
  digits = sources.load_digits(None)
  for i, (image, label) in enumerate(zip(digits.images, digits.labels)):
    (folder / str(label)).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[:, :, 0]).save(folder / str(label) / f'{i:04d}.png')
  return folder


@pytest.mark.slow
@pytest.mark.parametrize('streamed', [False, True])
def test_sigkill_then_restart_ends_bitwise_like_an_uninterrupted_run(
    tmp_path, streamed):
  run = ['--config.train.num_epochs=12', '--config.train.warmup_epochs=4',
         '--config.train.checkpoint_every_steps=10']
  if streamed:  # the same digits, as files read from disk by the batches
    run += ['--config.dataset.name=folder', '--config.dataset.stream=True',
            f'--config.dataset.path={_digits_as_files(tmp_path / "digits")}']
  straight = _cli(tmp_path / 'straight', *run)
  assert straight.returncode == 0, straight.stderr[-3000:]

  killed_dir = tmp_path / 'killed'
  proc = _cli(killed_dir, *run, wait=False)
  _wait_for_checkpoint(killed_dir, 40, proc)  # in the joint phase (>= 28)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not (killed_dir / 'results.json').exists()
  resumed = _cli(killed_dir, *run)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from the checkpoint of step' in resumed.stderr

  last = 12 * 7
  want, got = _params(tmp_path / 'straight', last), _params(killed_dir, last)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  results = [json.loads((d / 'results.json').read_text())
             for d in (tmp_path / 'straight', killed_dir)]
  for r in results:
    r.pop('seconds')
  assert results[0] == results[1]

  # A finished run is evaluated again, not retrained.
  again = _cli(killed_dir, *run)
  assert again.returncode == 0
  assert 'Training already finished' in again.stderr
  assert 'img/s' not in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT,
                                    signal.SIGHUP])
def test_sigterm_ctrl_c_or_hangup_checkpoints_and_exits_zero(tmp_path, signum):
  # Each keeps the steps since the last periodic checkpoint: a Ctrl-C
  # (SIGINT), a closed terminal or SSH connection (SIGHUP), a scheduler's
  # SIGTERM.
  workdir = tmp_path / 'run'
  proc = _cli(workdir, '--config.train.num_epochs=1000',
              '--config.train.checkpoint_every_steps=20', wait=False)
  _wait_for_checkpoint(workdir, 20, proc)
  sent = time.time()
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0, stderr[-3000:]
  assert time.time() - sent < 20
  assert 'the same command resumes' in stderr
  assert max(_steps(workdir)) >= 20
  assert not (workdir / 'results.json').exists()


@pytest.mark.slow
@pytest.mark.parametrize('when', ['importing', 'compiling'])
def test_an_early_ctrl_c_is_one_line_and_130(tmp_path, when):
  # While jcc imports JAX, then while it builds and compiles the steps: a
  # KeyboardInterrupt's traceback there, or a segfault, ended the process.
  workdir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'jcc.main', '--config=configs/digits.py',
         f'--workdir={workdir}', *TINY_FLAGS]
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  proc = subprocess.Popen(  # Ctrl-C as a terminal delivers it
      cmd, cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  seen = []
  if when == 'importing':
    time.sleep(1.0)
  else:
    for line in proc.stderr:  # the data are loaded: the steps compile next
      seen.append(line)
      if 'Loaded digits' in line:
        break
  proc.send_signal(signal.SIGINT)
  _, rest = proc.communicate(timeout=120)
  stderr = ''.join(seen) + rest
  assert proc.returncode == 130, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert stderr.strip().splitlines()[-1] == (
      'jcc: interrupted; no checkpoint was written yet.')


@pytest.mark.slow
def test_a_stop_during_the_final_evaluation_says_so_and_evaluates_again(
    tmp_path):
  # SIGTERM during the final evaluation: one line, and evaluated again.
  workdir = tmp_path / 'run'
  _train_tiny(workdir)  # trained to its last step, not yet evaluated
  flags_ = ('--config.train.num_epochs=2', '--config.train.warmup_epochs=1',
            '--config.train.eval_batch_size=8')  # a longer evaluation
  proc = _cli(workdir, *flags_, wait=False)
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if 'Evaluating the model of step 14' in line:
      proc.send_signal(signal.SIGTERM)
      break
  _, rest = proc.communicate(timeout=120)
  stderr = ''.join(seen) + rest
  assert proc.returncode == 0, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert 'SIGTERM during the evaluation' in stderr
  assert 'the same command evaluates it again' in stderr
  assert not (workdir / 'results.json').exists()
  again = _cli(workdir, *flags_)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / 'results.json').read_text())['cluster_head']


@pytest.mark.slow
def test_a_full_disk_stops_in_one_line_and_the_rerun_resumes(tmp_path):
  # One line, not hundreds of lines of tracebacks from orbax's threads.
  disk = tmp_path / 'disk'
  disk.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=30M', 'tmpfs',
                     str(disk)], capture_output=True).returncode:
    pytest.skip('mounting a small tmpfs needs root (CI runs as root)')
  proc = None
  try:
    workdir = disk / 'run'
    proc = _cli(workdir, '--config.train.num_epochs=1000',
                '--config.train.checkpoint_every_steps=10', wait=False)
    _wait_for_checkpoint(workdir, 10, proc)
    # Unbuffered: a buffered file kept the bytes the full disk refused and
    # failed again on closing, which failed this test now and then.
    with open(disk / 'filler', 'wb', buffering=0) as filler:
      try:
        while True:
          filler.write(bytes(1 << 16))
      except OSError:
        pass  # full
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    errors = [l for l in stderr.splitlines() if l.startswith('jcc: error:')]
    assert len(errors) == 1, stderr[-3000:]
    assert f'No space left for {workdir}: a checkpoint needs about' in (
        errors[0]) and 'MB free' in errors[0]
    assert 10 in _steps(workdir)
    (disk / 'filler').unlink()
    resumed = _cli(workdir, '--config.train.num_epochs=3')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'Resumed from the checkpoint of step' in resumed.stderr
    assert (workdir / 'results.json').exists()
  finally:
    if proc is not None and proc.poll() is None:
      proc.kill()  # else the mount stays busy
      proc.communicate()
    subprocess.run(['umount', str(disk)], check=False)


# ---------------------------------------------------------------------------
# One run per workdir.


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  workdir = tmp_path / 'run'
  first = workflows.build_trainer(tiny_config(), str(workdir))
  try:
    holder = f'a training (PID {os.getpid()} on {socket.gethostname()})'
    with pytest.raises(CheckpointError, match=re.escape(holder)):
      workflows.build_trainer(tiny_config(), str(workdir))
    with pytest.raises(CheckpointError, match='one run per workdir'):
      workflows.evaluate_workdir(tiny_config(), str(workdir))
  finally:
    first.close()
  second = workflows.build_trainer(tiny_config(), str(workdir))  # released on close
  second.close()


@pytest.mark.slow
def test_two_commands_on_one_workdir_do_not_overwrite_each_other(tmp_path):
  # Seeds 0 and 1 on one workdir at once: the second is refused, rather
  # than replacing the other's checkpoints and results.json.
  workdir = tmp_path / 'run'
  proc = _cli(workdir, '--config.train.num_epochs=1000',
              '--config.train.checkpoint_every_steps=20', wait=False)
  try:
    _wait_for_checkpoint(workdir, 20, proc)
    second = _cli(workdir, '--config.seed=1')
    _assert_clean_error(second, f'a training (PID {proc.pid} on '
                        f'{socket.gethostname()})', 'one run per workdir')
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
  assert proc.returncode == 0


# ---------------------------------------------------------------------------
# Damaged checkpoints.


def _train_tiny(workdir, **overrides):
  trainer = workflows.build_trainer(tiny_config(**overrides), str(workdir))
  trainer.train()
  trainer.close()


def _truncate_data_files(checkpoint):
  for path in checkpoint.rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _remove_metadata(checkpoint):
  (checkpoint / 'default' / '_METADATA').unlink()
  for path in (checkpoint / 'default').rglob('manifest.ocdbt'):
    path.unlink()


@pytest.mark.parametrize('damage', [_truncate_data_files, _remove_metadata])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(
    trained_copy, damage, caplog):
  workdir = trained_copy
  assert _steps(workdir) == [7, 14]
  damage(workdir / 'checkpoints' / '14')
  trainer = workflows.build_trainer(tiny_config(), str(workdir))
  try:
    with caplog.at_level('WARNING'):
      assert trainer.restore_latest()
    assert int(trainer.state.step) == 7
    assert 'cannot be read' in caplog.text
    assert (workdir / 'damaged_checkpoints').is_dir()
    assert _steps(workdir) == [7]
    assert trainer.train()  # trains 7 → 14 again and saves it
    assert _steps(workdir) == [7, 14]
  finally:
    trainer.close()


@pytest.mark.parametrize('saved_rows', [5, 6, 8])
def test_a_table_padded_for_other_devices_resumes_fitted(tmp_path,
                                                        saved_rows):
  # DEC's target has N rows rounded up to a multiple of the devices: a run
  # resumed on another number of devices (or from an unpadded table) reads
  # the saved rows and cuts or pads them, and sets no checkpoint aside.
  mesh = parallel.make_mesh(devices(2))
  replicated, rows = parallel.shardings(mesh)
  saved = np.arange(saved_rows * 3, dtype=np.float32).reshape(-1, 3) + 1
  state = {'step': parallel.to_global(np.int32(4), replicated)}
  checkpoints = checkpoint.Checkpoints(str(tmp_path), 2)
  checkpoints.save(4, {'state': state,
                       'target': parallel.to_global(saved, replicated)})
  checkpoints.close()
  like = {'state': state, 'target': parallel.row_table(
      (6, 3), mesh, lambda part: np.zeros((3, 3), np.float32))}
  # Another process's, as a resume's: it has saved nothing yet.
  checkpoints = checkpoint.Checkpoints(str(tmp_path), 2)
  restored = checkpoints.restore_latest(like)
  checkpoints.close()
  expected = np.zeros((6, 3), np.float32)
  expected[:min(saved_rows, 6)] = saved[:6]
  np.testing.assert_array_equal(np.asarray(restored['target']), expected)
  assert restored['target'].sharding.is_equivalent_to(rows, 2)
  assert not (tmp_path / 'damaged_checkpoints').exists()


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(trained_copy):
  workdir = trained_copy
  for step in _steps(workdir):
    _truncate_data_files(workdir / 'checkpoints' / str(step))
  trainer = workflows.build_trainer(tiny_config(), str(workdir))
  try:
    with pytest.raises(CheckpointError, match='can be read'):
      trainer.restore_latest()
  finally:
    trainer.close()


# ---------------------------------------------------------------------------
# Non-finite losses.


def test_non_finite_loss_stops_and_writes_no_bad_state(tmp_path):
  workdir = tmp_path / 'run'
  trainer = workflows.build_trainer(
      tiny_config(learning_rate=1e30, checkpoint_every_steps=1), str(workdir))
  try:
    with pytest.raises(FloatingPointError,
                       match=r'at step 2: .*instance'):
      trainer.train()
  finally:
    trainer.close()
  assert _steps(workdir) == [1]
  saved = _params(workdir, 1)
  for leaf in jax.tree.leaves(saved):
    assert np.all(np.isfinite(leaf))


# ---------------------------------------------------------------------------
# Bad input: one clear line, before anything is compiled or written.


def _assert_clean_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('jcc: error:'), proc.stderr[-2000:]
  for fragment in fragments:
    assert fragment in last


@pytest.mark.parametrize('flags_,fragments', [
    (['--config.train.nonsense=1'], ['unknown config field', 'train.nonsense']),
    (['--config.dataset.name=cifar11'], ["'cifar11'"]),
    (['--config.dataset.num_clusters=5000'], ['num_clusters=5000']),
    (['--config.dataset.name=npz', '--config.dataset.path=/nonexistent.npz'],
     ['/nonexistent.npz']),
    (['--mode=evaluate'], ['No checkpoint']),
    (['--mode=predict'], ['predict.input']),
    (['--config.train.log_every_steps=0'], ['log_every_steps=0']),
])
def test_user_mistakes_end_in_one_line_before_the_workdir_is_made(
    tmp_path, flags_, fragments):
  # In this process, through the real flag parser; the slow test below runs
  # the same as `python -m jcc.main`.
  workdir = tmp_path / 'w'
  finished = cli.run_main(f'--config={REPO_ROOT}/configs/digits.py',
                          f'--workdir={workdir}', *TINY_FLAGS, *flags_)
  assert finished.status == 2, finished.stderr[-3000:]
  assert 'Traceback' not in finished.stderr
  assert finished.last_line.startswith('jcc: error:'), finished.stderr
  for fragment in fragments:
    assert fragment in finished.last_line
  assert not workdir.exists()


@pytest.mark.slow
def test_command_line_reports_user_mistakes_in_one_line(tmp_path,
                                                        system_temp_dir):
  workdir = tmp_path / 'w'
  _assert_clean_error(_cli(workdir, '--config.train.nonsense=1'),
                      'unknown config field', 'train.nonsense')
  _assert_clean_error(_cli(workdir, '--config.dataset.name=cifar11'),
                      "'cifar11'")
  _assert_clean_error(_cli(workdir, '--config.dataset.num_clusters=5000'),
                      'num_clusters=5000')
  _assert_clean_error(_cli(workdir, '--config.dataset.name=npz',
                           '--config.dataset.path=/nonexistent.npz'),
                      '/nonexistent.npz')
  _assert_clean_error(_cli(workdir, '--mode=evaluate'), 'No checkpoint')
  _assert_clean_error(_cli(workdir, '--mode=predict'), 'predict.input')
  _assert_clean_error(_cli(workdir, '--config.train.log_every_steps=0'),
                      'log_every_steps=0')
  leaked_by_tfds = set(system_temp_dir.glob('tmp*tfds'))
  with_tfds = importlib.util.find_spec('tensorflow_datasets') is not None
  _assert_clean_error(
      _cli(workdir, '--config.dataset.name=cifar10',
           f'--config.dataset.tfds_data_dir={tmp_path / "tfds"}'),
      *(('is not prepared', str(tmp_path / 'tfds'), 'tfds build')
        if with_tfds else ("pip install 'jcc-clustering[tfds]'",)))
  # conftest.system_temp_dir's TMPDIR keeps the subprocess's out of /tmp too.
  assert set(system_temp_dir.glob('tmp*tfds')) == leaked_by_tfds
  assert not workdir.exists()  # no partial output
  blocked = tmp_path / 'file'
  blocked.write_text('a file where the workdir should go')
  _assert_clean_error(_cli(blocked / 'sub'), 'cannot be written')


def test_evaluate_with_another_architecture_or_k_is_refused(
    tmp_path, trained_copy):
  workdir = trained_copy
  other_k = tiny_config()
  other_k.dataset.num_clusters = 12
  with pytest.raises(CheckpointError, match='dataset.num_clusters: 10 there, 12 now'):
    workflows.evaluate_workdir(other_k, str(workdir))
  other_net = tiny_config()
  other_net.model.convnet_widths = (8, 16, 32)
  with pytest.raises(CheckpointError, match='convnet_widths'):
    workflows.build_trainer(other_net, str(workdir))
  # A neighbour term adds the neighbours to the checkpoints: named, rather
  # than 'none of the checkpoints can be read'.
  with_neighbors = tiny_config()
  with_neighbors.loss.neighbor_consistency = 1.0
  with pytest.raises(CheckpointError,
                     match=r'a neighbour term \(loss.neighbor_consistency or '
                     r'loss.neighbor_instance\): False there, True now'):
    workflows.build_trainer(with_neighbors, str(workdir))
  # Another dataset: named, rather than 'none of the checkpoints can be
  # read', whose advice (move them away) threw good checkpoints out.
  path = tmp_path / 'other.npz'
  np.savez(path, images=np.zeros((300, 8, 8), np.uint8))
  other_data = tiny_config()
  other_data.dataset.name, other_data.dataset.path = 'npz', str(path)
  with pytest.raises(CheckpointError, match="dataset.name: 'digits' there, "
                     "'npz' now; images: 1797 there, 300 now"):
    workflows.evaluate_workdir(other_data, str(workdir))


@pytest.mark.parametrize('change,match', [
    (dict(num_clusters=1), 'num_clusters=1: must be an integer >= 2'),
    (dict(num_clusters=2000), 'exceeds the 1797 examples'),
    (dict(batch_size=8), 'smaller than config.dataset.num_clusters=10'),
    (dict(batch_size=99), 'does not divide over the {devices} devices'),
])
def test_config_mistakes_are_caught_before_anything_is_written(
    tmp_path, change, match):
  config = tiny_config()
  if 'num_clusters' in change:
    config.dataset.num_clusters = change['num_clusters']
  else:
    config.train.batch_size = change['batch_size']
  match = match.format(devices=jax.device_count())  # 99 divides over none
  with pytest.raises(ConfigError, match=match):
    workflows.build_trainer(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


# ---------------------------------------------------------------------------
# Image folders: bad files, mixed modes, labels.


def _folder_config(path, **kw):
  config = tiny_config()
  config.dataset.name = 'folder'
  config.dataset.path = str(path)
  config.dataset.update(kw)
  return config.dataset


def _write(path, mode, size=(10, 12)):
  rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
  channels = {'L': 1, 'RGB': 3, 'RGBA': 4}[mode]
  pixels = rng.integers(0, 256, size[::-1] + (channels,), dtype=np.uint8)
  Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels,
                  mode).save(path)


def test_folder_with_class_subfolders_and_mixed_modes(tmp_path):
  for cls, modes in (('cat', ('L', 'RGB')), ('dog', ('RGBA', 'L'))):
    (tmp_path / cls).mkdir()
    for i, mode in enumerate(modes):
      _write(tmp_path / cls / f'{i}.png', mode)
  ds = sources.load_dataset(_folder_config(tmp_path))
  assert ds.images.shape == (4, 8, 8, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
  # The grayscale file became RGB with equal channels.
  gray = ds.images[0]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_flat_grayscale_folder_has_no_labels(tmp_path):
  for i in range(3):
    _write(tmp_path / f'{i}.jpg', 'L')
  ds = sources.load_dataset(_folder_config(tmp_path))
  assert ds.images.shape == (3, 8, 8, 1) and ds.labels is None


def test_images_beside_class_folders_are_an_error_not_dropped(tmp_path):
  # 40 top-level images beside a class folder of 20: an error, rather than
  # training on the 20 alone, scored against a single class.
  for i in range(4):
    _write(tmp_path / f'top{i}.png', 'RGB')
  (tmp_path / 'cats').mkdir()
  for i in range(2):
    _write(tmp_path / 'cats' / f'{i}.png', 'RGB')
  with pytest.raises(DataError, match=r'4 images at its top level .*cats'):
    sources.load_dataset(_folder_config(tmp_path))


def test_images_at_any_depth_count_and_what_is_passed_over_is_named(
    tmp_path, caplog):
  # dogs/2023/5.png was dropped with no word, and a class whose images all
  # lay one level down vanished with them.
  for path in ('dogs/a.png', 'dogs/2023/5.png', 'dogs/2023/may/6.png',
               'cats/2022/b.png', 'cats/.thumbs/t.png'):
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    _write(tmp_path / path, 'RGB')
  (tmp_path / 'dogs' / 'notes.txt').write_text('not an image')
  (tmp_path / 'empty').mkdir()
  with caplog.at_level('WARNING'):
    ds = sources.load_dataset(_folder_config(tmp_path))
  assert ds.class_names == ('cats', 'dogs')
  assert ds.image_names == (os.path.join('cats', '2022', 'b.png'),
                            os.path.join('dogs', '2023', '5.png'),
                            os.path.join('dogs', '2023', 'may', '6.png'),
                            os.path.join('dogs', 'a.png'))
  np.testing.assert_array_equal(ds.labels, [0, 1, 1, 1])
  for passed_over in ('notes.txt', '.thumbs', 'empty'):
    assert passed_over in caplog.text
  # Predict takes every image under the folder, named by its path.
  names, images = sources.load_predict_images(str(tmp_path), 8, 3)
  assert names == list(ds.image_names) and len(images) == 4


@pytest.mark.parametrize('labels,match', [
    (np.array([0, 1, -1, 2, 0, 1]), 'negative'),
    (np.array([0.0, 1.0, np.nan, 2.0, 0.0, 1.0]), 'not whole numbers'),
    (np.array([0.0, 1.5, 1.0, 2.0, 0.0, 1.0]), 'not whole numbers'),
    (np.array(['a'] * 6), 'integer class indices'),
])
def test_npz_labels_must_be_class_indices(tmp_path, labels, match):
  # Labels of -1 were scored silently; NaN labels crashed the evaluation
  # after training, and every rerun again.
  path = tmp_path / 'x.npz'
  np.savez(path, images=np.zeros((6, 8, 8), np.uint8), labels=labels)
  config = tiny_config()
  config.dataset.name, config.dataset.path = 'npz', str(path)
  with pytest.raises(DataError, match=match):
    sources.load_dataset(config.dataset)
  np.savez(path, images=np.zeros((6, 8, 8), np.uint8),
           labels=np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))  # whole floats
  assert sources.load_dataset(config.dataset).labels.dtype == np.int64


def test_unreadable_images_are_skipped_with_a_warning_or_refused(
    tmp_path, caplog):
  for i in range(3):
    _write(tmp_path / f'{i}.png', 'RGB')
  (tmp_path / 'broken.png').write_bytes(b'not an image at all')
  good = (tmp_path / '0.png').read_bytes()
  (tmp_path / 'truncated.png').write_bytes(good[: len(good) // 2])
  with caplog.at_level('WARNING'):
    ds = sources.load_dataset(_folder_config(tmp_path))
  assert len(ds) == 3
  assert 'broken.png' in caplog.text and 'truncated.png' in caplog.text
  with pytest.raises(DataError, match='broken.png.*skip_bad_images'):
    sources.load_dataset(_folder_config(tmp_path, skip_bad_images=False))


def test_empty_missing_or_all_bad_folders_are_clear_errors(tmp_path):
  with pytest.raises(DataError, match='no images found'):
    sources.load_dataset(_folder_config(tmp_path))
  with pytest.raises(DataError, match='no directory'):
    sources.load_dataset(_folder_config(tmp_path / 'absent'))
  (tmp_path / 'a.png').write_bytes(b'junk')
  with pytest.raises(DataError, match='none of the 1 image files'):
    sources.load_dataset(_folder_config(tmp_path))


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
  # A 0…65535 gradient: PIL's convert('L') clips it to {0, 255}, 99% white.
  gradient = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
  Image.fromarray(gradient).save(tmp_path / 'deep.png')
  assert Image.open(tmp_path / 'deep.png').mode.startswith('I')
  ds = sources.load_dataset(_folder_config(tmp_path, image_size=32))
  row = ds.images[0, 0, :, 0].astype(int)
  np.testing.assert_allclose(row, np.round(np.linspace(0, 255, 32)), atol=1)


def test_exif_orientation_is_applied_as_a_viewer_shows_it(tmp_path):
  # Stored as a left-bright image, with EXIF orientation 6 (rotate 90° CW to
  # view): viewed, the bright half is at the top.
  stored = np.zeros((16, 16, 3), np.uint8)
  stored[:, :8] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(stored).save(tmp_path / 'turned.jpg', exif=exif,
                               quality=95)
  ds = sources.load_dataset(_folder_config(tmp_path, image_size=16))
  image = ds.images[0].mean(axis=-1)
  assert image[:8].mean() > 200 and image[8:].mean() < 50


def test_dangling_links_and_link_loops_are_reported_not_dropped(
    tmp_path, caplog):
  for i in range(3):
    _write(tmp_path / f'{i}.png', 'RGB')
  os.symlink(tmp_path / 'gone.png', tmp_path / 'dangling.png')
  os.symlink(tmp_path / 'loop.png', tmp_path / 'loop.png')
  with caplog.at_level('WARNING'):
    ds = sources.load_dataset(_folder_config(tmp_path))
  assert len(ds) == 3
  for name in ('dangling.png', 'loop.png'):
    assert f'{name} (a symbolic link that leads to no file)' in caplog.text
  with pytest.raises(DataError, match='2 unusable image file'):
    sources.load_dataset(_folder_config(tmp_path, skip_bad_images=False))


def test_a_decompression_bomb_is_called_too_large(tmp_path, caplog,
                                                  monkeypatch):
  for i in range(2):
    _write(tmp_path / f'{i}.png', 'RGB')
  _write(tmp_path / 'huge.png', 'RGB', size=(64, 64))
  # Pillow refuses over twice MAX_IMAGE_PIXELS: 64×64 over a limit of 1,000.
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 500)
  with caplog.at_level('WARNING'):
    ds = sources.load_dataset(_folder_config(tmp_path))
  assert len(ds) == 2
  assert 'huge.png (too large to decode safely' in caplog.text
  assert 'up to 1,000 pixels' in caplog.text


@pytest.mark.parametrize('write,match', [
    (lambda p: p.write_bytes(b''), r'an empty file \(0 bytes\)'),
    (lambda p: np.save(open(p, 'wb'), np.zeros((2, 8, 8), np.uint8)),
     'one .npy array, not an .npz'),
    (lambda p: p.write_text('just some text\n'), r'not an .npz \(a zip'),
])
def test_a_file_that_is_not_an_npz_says_what_it_is(tmp_path, write, match):
  path = tmp_path / 'data.npz'
  write(path)
  with pytest.raises(DataError, match=match) as error:
    sources.load_dataset(_folder_config(path, name='npz'))
  assert 'allow_pickle' not in str(error.value)  # unsafe advice, and wrong


def test_npz_is_read_without_pickle_nor_advice_to_allow_it(tmp_path):
  path = tmp_path / 'objects.npz'
  np.savez(path, images=np.array([None, 1], dtype=object))
  with pytest.raises(DataError, match='object arrays') as error:
    sources.load_dataset(_folder_config(path, name='npz'))
  assert 'allow_pickle' not in str(error.value)


def test_a_label_beyond_the_images_is_refused_when_loading(tmp_path):
  path = tmp_path / 'huge.npz'
  np.savez(path, images=np.zeros((6, 8, 8), np.uint8),
           labels=np.array([0, 1, 2, 0, 1, 10**12]))
  with pytest.raises(DataError, match='holds 1000000000000 for 6 images'):
    sources.load_dataset(_folder_config(path, name='npz'))


def test_predict_checks_its_input_before_the_model(tmp_path):
  # No checkpoint in the workdir: the input's problem is said first.
  path = tmp_path / 'none.npz'
  np.savez(path, images=np.zeros((0, 8, 8), np.uint8))
  config = tiny_config()
  config.predict.input = str(path)
  with pytest.raises(DataError, match='holds no image'):
    workflows.predict_workdir(config, str(tmp_path / 'w'))
  (tmp_path / 'empty').mkdir()
  config.predict.input = str(tmp_path / 'empty')
  with pytest.raises(DataError, match='no images found'):
    workflows.predict_workdir(config, str(tmp_path / 'w'))


def test_a_leading_tilde_is_the_home_folder_in_every_path(tmp_path,
                                                          monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  np.savez(tmp_path / 'd.npz', images=np.zeros((4, 8, 8), np.uint8))
  config = tiny_config()
  config.dataset.name, config.dataset.path = 'npz', '~/d.npz'
  config.dataset.tfds_data_dir = '~/tfds'
  config.predict.input = '~/new'
  expanded = workflows.expand_paths(config)
  assert expanded.dataset.path == str(tmp_path / 'd.npz')
  assert expanded.dataset.tfds_data_dir == str(tmp_path / 'tfds')
  assert expanded.predict.input == str(tmp_path / 'new')
  assert config.dataset.path == '~/d.npz'  # the caller's config unchanged
  with pytest.raises(ConfigError, match='exceeds the 4 examples'):
    workflows.train_and_evaluate(config, '~/w')  # the file was found
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('content,match', [
    (None, r'cannot be read \(\[Errno 2\] No such file'),
    ('def get_config(:\n', 'the config file failed .SyntaxError'),
    ('def get_config():\n  raise RuntimeError("boom")\n',
     r'the config file failed \(RuntimeError: boom\)'),
    ('def get_config():\n  return {}["x"]\n',
     r'the config file failed \(KeyError'),
])
def test_a_config_file_that_cannot_load_is_one_line(tmp_path, content, match):
  path = tmp_path / 'my_config.py'
  if content is not None:
    path.write_text(content)
  finished = cli.run_main(f'--config={path}', f'--workdir={tmp_path / "w"}')
  assert finished.status == 2 and 'Traceback' not in finished.stderr
  assert finished.last_line.startswith(f'jcc: error: --config={path}')
  assert re.search(match, finished.last_line), finished.last_line


def test_an_unknown_field_is_named_alone(tmp_path):
  finished = cli.run_main(
      f'--config={REPO_ROOT}/configs/digits.py', f'--workdir={tmp_path}/w',
      '--config.train.num_epochs=2', '--config.train.foo=1',
      '--config.dataset.image_size=8')
  assert finished.status == 2
  assert finished.last_line == ('jcc: error: unknown config field train.foo: '
                                'jcc/configs/default.py lists every field.')


def test_configs_load_from_any_working_directory(tmp_path):
  # The configs import their siblings (`from jcc.configs import default`),
  # whatever the working directory.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('PYTHONPATH', None)
  proc = subprocess.run(
      [sys.executable, '-m', 'jcc.main',
       f'--config={REPO_ROOT}/configs/digits.py', f'--workdir={tmp_path}/w',
       '--config.train.num_epochs=0'], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'jcc: error: config.train.num_epochs=0')


def test_a_platform_jax_cannot_use_is_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='tpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'jcc.main',
       f'--config={REPO_ROOT}/configs/digits.py', f'--workdir={tmp_path}/w'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'jcc: error: JAX_PLATFORMS=tpu: JAX cannot use it')
  assert not (tmp_path / 'w').exists()


def test_identical_images_are_said_in_jcc_words(tmp_path, caplog):
  same = np.full((12, 10, 3), 77, np.uint8)
  for i in range(6):
    Image.fromarray(same).save(tmp_path / f'{i}.png')
  config = _folder_config(tmp_path, num_clusters=3)
  with caplog.at_level('WARNING'):
    sources.load_dataset(config)
  assert 'only 1 distinct image(s) among 6, fewer than K=3' in caplog.text
  caplog.clear()
  with caplog.at_level('WARNING'):
    with warnings.catch_warnings():
      warnings.simplefilter('error')  # scikit-learn's own must not show
      centroids, labels = evaluate.kmeans(np.ones((6, 4)), 3, seed=0,
                                          n_init=1)
  assert 'k-means found 1 distinct embeddings for K=3' in caplog.text
  assert centroids.shape == (3, 4) and labels.shape == (6,)


@pytest.mark.parametrize('flags_,fragment', [
    (['--config.train.batch_size=1e3'], "invalid literal for int()"),
    (['--config.model.convnet_widths=(8,'], 'Error while parsing string'),
    (['--mode=bogus'], 'value should be one of'),
    (['--workdir='], '--workdir is empty'),
])
def test_flag_mistakes_are_one_line(tmp_path, flags_, fragment):
  finished = cli.run_main(f'--config={REPO_ROOT}/configs/digits.py',
                          f'--workdir={tmp_path / "w"}', *flags_)
  assert finished.status == 2
  lines = finished.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('jcc: error:'), lines
  assert fragment in lines[0]


def test_a_stray_argument_and_a_second_config_are_one_line(tmp_path):
  finished = cli.run_main('--config=digits', f'--workdir={tmp_path}/w', 'foo')
  assert finished.status == 2
  assert finished.last_line.startswith(
      'jcc: error: unexpected argument foo: jcc takes flags only')
  finished = cli.run_main('--config=digits', '--config=mnist',
                          f'--workdir={tmp_path}/w')
  assert finished.status == 2
  assert finished.last_line == (
      'jcc: error: --config is given more than once: name one config.')
  finished = cli.run_main('--config=mnist:bogus', f'--workdir={tmp_path}/w')
  assert finished.status == 2 and 'Traceback' not in finished.stderr
  assert finished.last_line.startswith(
      'jcc: error: --config=mnist:bogus: the config file failed (ValueError: '
      "configs/mnist.py:bogus: the only option is ':paper'")


def test_jcc_never_writes_through_a_link_nor_into_a_file_not_its_own(
    tmp_path):
  workdir, target = tmp_path / 'w', tmp_path / 'precious.txt'
  workdir.mkdir()
  target.write_text('keep me')
  for name in ('lock', 'metrics.jsonl'):
    (workdir / name).symlink_to(target)
    finished = cli.run_main('--config=digits', f'--workdir={workdir}')
    assert finished.status == 2
    assert 'is a symbolic link' in finished.last_line, finished.last_line
    assert target.read_text() == 'keep me'
    (workdir / name).unlink()
  # The lock itself refuses a link (checked again where it opens) and a
  # file of someone else's.
  (workdir / 'lock').symlink_to(target)
  with pytest.raises(CheckpointError, match='symbolic link'):
    WorkdirLock(str(workdir), 'train')
  (workdir / 'lock').unlink()
  (workdir / 'lock').write_text('my notes')
  with pytest.raises(CheckpointError, match="not jcc's lock file"):
    WorkdirLock(str(workdir), 'train')
  assert (workdir / 'lock').read_text() == 'my notes'
  assert target.read_text() == 'keep me'


def test_an_interrupt_says_whether_a_checkpoint_was_kept(tmp_path,
                                                         monkeypatch):
  def interrupted(config, workdir):
    raise KeyboardInterrupt
  monkeypatch.setattr(workflows, 'train_and_evaluate', interrupted)
  finished = cli.run_main('--config=digits', f'--workdir={tmp_path}/w')
  assert finished.status == 130
  assert finished.last_line == (
      'jcc: interrupted; no checkpoint was written yet.')
  (tmp_path / 'w' / 'checkpoints' / '7').mkdir(parents=True)
  finished = cli.run_main('--config=digits', f'--workdir={tmp_path}/w')
  assert finished.last_line == (
      'jcc: interrupted; the workdir keeps its last checkpoint.')


def test_a_workdir_inside_the_image_folder_is_refused(tmp_path):
  for i in range(4):
    _write(tmp_path / f'{i}.png', 'RGB')
  config = tiny_config()
  config.dataset.name, config.dataset.path = 'folder', str(tmp_path)
  for workdir in (tmp_path, tmp_path / 'run'):
    with pytest.raises(ConfigError, match='lies in the folder of images'):
      workflows.build_trainer(config, str(workdir))
  assert not (tmp_path / 'run').exists()


def test_predict_names_fields_it_does_not_read_and_a_file_as_workdir(
    tmp_path):
  finished = cli.run_main('--mode=predict', f'--workdir={tmp_path}',
                          '--config.dataset.num_clusters=5')
  assert finished.status == 2
  assert finished.last_line == (
      'jcc: error: dataset.num_clusters: not read by --mode=predict without '
      '--config, whose saved model brings its own; only predict.*, '
      'dataset.skip_bad_images and distributed.* apply.')
  (tmp_path / 'a_file').write_text('x')
  np.savez(tmp_path / 'new.npz', images=np.zeros((2, 8, 8), np.uint8))
  finished = cli.run_main('--mode=predict', f'--workdir={tmp_path}/a_file',
                          f'--config.predict.input={tmp_path}/new.npz')
  assert finished.status == 2
  assert 'a_file: is a file; give the workdir' in finished.last_line


def test_a_very_large_image_is_named_in_a_line_of_jccs(tmp_path, caplog,
                                                        monkeypatch):
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top
  _write(tmp_path / 'big.png', 'RGB', size=(20, 20))
  _write(tmp_path / 'small.png', 'RGB', size=(5, 5))
  monkeypatch.setattr(PILImage, 'MAX_IMAGE_PIXELS', 300)  # 400 > 300
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # Pillow's own warning would fail here
    with caplog.at_level('WARNING'):
      ds = sources.load_dataset(_folder_config(tmp_path))
  assert len(ds) == 2
  assert '1 very large image(s), over 300 pixels' in caplog.text
  assert 'big.png' in caplog.text and 'small.png' not in caplog.text


def test_non_finite_embeddings_stop_before_k_means(tmp_path):
  trainer = workflows.build_trainer(tiny_config(), str(tmp_path / 'run'))
  try:
    state = trainer.run.train
    # A diverged backbone: its last BatchNorm offset at infinity (NaN
    # weights would vanish in the ReLUs).
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + np.inf if 'BatchNorm_3' in str(path) and
        'bias' in str(path[-1]) else x, state.params)
    run = trainer.run.replace(train=state.replace(params=params))
    with pytest.raises(FloatingPointError, match='not finite where k-means'):
      trainer.passes.with_kmeans_centroids(run)
  finally:
    trainer.close()
