"""Test setup: 8 fake CPU devices (set before jax is imported) and shared data."""

import atexit
import os
import pathlib
import shutil
import tempfile

# Must happen before the first `import jax` anywhere in the test session.
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (
      _flags + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

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

from configs import digits  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'


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
