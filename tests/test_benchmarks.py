"""Every benchmark script starts from its documented command, either form,
and the train step they time runs for each kind of config."""

import os
import subprocess
import sys

import pytest

from benchmarks.jcc_step import step_runner
from jcc.configs import mnist
from tests.conftest import REPO_ROOT

SCRIPTS = sorted(
    p.stem for p in (REPO_ROOT / 'benchmarks').glob('*.py')
    if "if __name__ == '__main__':" in p.read_text())


def test_the_scripts_are_found():
  assert {'cpu_devices', 'input_pipeline', 'losses', 'quality',
          'train_step'} <= set(SCRIPTS)


@pytest.mark.parametrize(
    'form', ['module', pytest.param('script', marks=pytest.mark.slow)])
def test_help_runs_as_a_script_and_as_a_module(form):
  # Both forms must work: `python benchmarks/train_step.py` once failed
  # with "No module named 'benchmarks'" where the -m form worked.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  runs = {name: subprocess.Popen(
      [sys.executable, f'benchmarks/{name}.py', '--help'] if form == 'script'
      else [sys.executable, '-m', f'benchmarks.{name}', '--help'],
      cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE) for name in SCRIPTS}
  for name, run in runs.items():
    out, err = run.communicate(timeout=300)
    assert 'Traceback' not in err, (name, err[-2000:])
    if run.returncode:
      # Only the PyTorch comparisons may stop, and then with the install
      # command of the extra that brings PyTorch.
      assert "pip install -e '.[bench]'" in err, (name, err[-2000:])
    else:
      assert out.startswith('usage:'), (name, out[:500])


def test_step_runner_runs_a_joint_step_with_neighbours():
  # configs/mnist.py's neighbour terms made the step take each image's
  # neighbour too; step_runner gave none, and input_pipeline failed on it.
  config = mnist.get_config()
  config.train.batch_size = 8
  config.dataset.image_size = 8  # the protocol, not the size, is tested
  config.model.convnet_widths = (8, 16)
  run = step_runner(config, 1)
  run()
  run()
