"""The wheel carries what an installed jcc needs outside the checkout."""

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_the_wheel_runs_named_configs_outside_the_checkout(tmp_path):
  subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
       '-q', '-w', str(tmp_path / 'dist'),
       str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
  (wheel,) = (tmp_path / 'dist').glob('jcc_clustering-*.whl')
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    archive.extractall(tmp_path / 'site')
  assert {'jcc/configs/digits.py', 'jcc/configs/default.py',
          'jcc/prediction_config.py', 'jcc/wnids/imagenet10.txt'} <= names
  # The unpacked wheel first on the path, run from a folder with no
  # configs/: the name resolves inside the wheel's own package.
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=str(tmp_path / 'site'))
  proc = subprocess.run(
      [sys.executable, '-m', 'jcc.main', '--config=digits',
       f'--workdir={tmp_path}/w', '--config.train.num_epochs=0'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      'jcc: error: config.train.num_epochs=0: must be an integer >= 1.')
  found = subprocess.run(
      [sys.executable, '-c', 'import jcc.configs; print(jcc.configs.__file__)'],
      cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
  assert found.stdout.startswith(str(tmp_path / 'site'))
