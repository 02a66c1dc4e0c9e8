"""Test setup: fake CPU devices, XLA's optimisations off, shared data.

Two tiers (README, "Tests"): ``pytest`` runs the fast one, every test not
marked ``slow``, on 2 fake CPU devices; ``JCC_TEST_DEVICES=8 pytest -m 'slow
or tfds'`` the slow one (real signals, several processes, long runs) and the
TFDS tests, with 8 devices for the sharding checks that ask for them.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

# Must happen before the first `import jax` anywhere in the test session.
TEST_DEVICES = int(os.environ.get('JCC_TEST_DEVICES', '2'))
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (
      f'{_flags} --xla_force_host_platform_device_count={TEST_DEVICES}'
  ).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The tests' programs are tiny and compiled once or twice each: XLA's
# optimisation passes cost more than they save (as in flax's examples).
# Inherited by the `python -m jcc.main` processes the tests start.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

# One XLA compilation cache for the session and the `python -m jcc.main`
# processes it starts: the tests build many runs of the same tiny configs,
# and compiling their steps again and again was most of the suite's time
# (three runs of one test: 174 s without it, 94 s with it). Every compiled
# program goes in (no minimum compile time); the folder goes at exit.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _xla_cache = tempfile.mkdtemp(prefix='jcc-tests-xla-cache-')
  atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _xla_cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import pytest  # pylint: disable=g-import-not-at-top

from jcc.configs import digits  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'


# The device counts a sharding check runs on: 2 in the fast tier, 8 in the
# slow one (`@pytest.mark.parametrize('devices', SHARDED_DEVICES)`).
SHARDED_DEVICES = [2, pytest.param(8, marks=pytest.mark.slow)]


def devices(count: int) -> list:
  """The session's first ``count`` devices, or a skip naming how to get them."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.device_count() < count:
    pytest.skip(f'needs {count} devices, the session has '
                f'{jax.device_count()}: JCC_TEST_DEVICES={count} pytest ...')
  return jax.devices()[:count]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """Marks `tfds` every test that takes the tfds fixture (before -m reads it)."""
  for item in items:
    if 'tfds' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.tfds)


@pytest.fixture
def tfds():
  """tensorflow_datasets, or a skip naming the extra that installs it."""
  return pytest.importorskip(
      'tensorflow_datasets',
      reason="the TFDS sources need the [tfds] extra: pip install -e "
      "'.[tfds]' (the slow tier in CI runs these tests with it)")


@pytest.fixture
def shared_data() -> pathlib.Path:
  """../shared/data, or a skip when this clone has no shared folder beside it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'real-image data not found at {SHARED_DATA} (present in CI; '
                'see ../shared/data/README.md)')
  return SHARED_DATA


@pytest.fixture(autouse=True, scope='session')
def system_temp_dir(tmp_path_factory) -> pathlib.Path:
  """Sends the session's temporary files to a folder pytest cleans up.

  TFDS makes an empty ``mkdtemp('tfds')`` folder for every builder whose
  dataset is not prepared (``DatasetInfo.initialize_from_bucket``, tfds 4.9)
  and never removes it: one in /tmp per mock-data test, hundreds over a day
  of test runs. TMPDIR takes the subprocesses (`python -m jcc.main ...`)
  there too. Yields the system's temporary folder, which the suite leaves
  alone.
  """
  system = pathlib.Path(tempfile.gettempdir())
  folder = str(tmp_path_factory.mktemp('tempfile'))
  saved = tempfile.tempdir, os.environ.get('TMPDIR')
  tempfile.tempdir = os.environ['TMPDIR'] = folder
  yield system
  tempfile.tempdir = saved[0]
  if saved[1] is None:
    os.environ.pop('TMPDIR', None)
  else:
    os.environ['TMPDIR'] = saved[1]


def write_idx(path, array) -> None:
  """``array`` as an IDX file (MNIST's format), gzipped where ``path`` ends
  in .gz."""
  import gzip  # pylint: disable=g-import-not-at-top
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.astype('uint8').tobytes())


def tiny_config(**train_overrides):
  """Digits at 8×8 with a tiny ConvNet: seconds per epoch on a CPU."""
  config = digits.get_config()
  config.dataset.image_size = 8
  config.model.convnet_widths = (8, 16)
  config.model.head_hidden = 32
  config.model.projection_dim = 16
  config.model.decoder_width = 8
  config.train.batch_size = 256
  config.train.num_epochs = 2
  config.train.warmup_epochs = 1
  config.train.target_update_every_steps = 3
  config.train.kmeans_n_init = 2
  config.train.eval_batch_size = 512
  config.train.log_every_steps = 1
  config.train.min_steps = 0  # the tests' few epochs, as they ask
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory) -> pathlib.Path:
  """A workdir trained and evaluated once per session, never changed.

  tiny_config() with checkpoints at steps 7 and 14 (warm-up 7 steps, joint
  7). Tests that change a workdir take :func:`trained_copy`.
  """
  from jcc import workflows  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  workflows.train_and_evaluate(
      tiny_config(checkpoint_every_steps=7), str(workdir))
  return workdir


@pytest.fixture
def trained_copy(trained_workdir, tmp_path) -> pathlib.Path:
  """A copy of the session's trained workdir that the test may change."""
  copy = tmp_path / 'run'
  shutil.copytree(trained_workdir, copy)
  return copy
