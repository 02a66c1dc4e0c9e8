"""Every benchmark script starts from its documented command, either form,
and the train step they time runs for each kind of config."""

import importlib
import os
import subprocess
import sys

import pytest

import jax
import numpy as np
from jax import lax

from benchmarks import conv_grad
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
  # Both forms work: `python benchmarks/train_step.py` needs the repository
  # root on the import path as much as `python -m benchmarks.train_step`.
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
  # configs/mnist.py's neighbour terms make the step take each image's
  # neighbour too: step_runner must give one.
  config = mnist.get_config()
  config.train.batch_size = 8
  config.dataset.image_size = 8  # the protocol, not the size, is tested
  config.model.convnet_widths = (8, 16)
  run = step_runner(config, 1)
  run()
  run()


@pytest.mark.parametrize('batch,size,c_in,c_out,kernel,stride,padding', [
    (4, 8, 16, 8, 3, 1, 'SAME'),
    (3, 9, 16, 8, 3, 2, 'SAME'),  # odd size, stride 2
    (2, 7, 5, 6, 3, 2, 'VALID'),
    (2, 8, 16, 4, 1, 2, 'SAME'),  # 1×1, stride 2: rows no window reaches
    (2, 10, 3, 4, 7, 2, ((3, 3), (3, 3))),  # the ImageNet stem
    (2, 7, 4, 4, 3, 1, ((0, 2), (1, 0))),
])
def test_the_per_tap_convolution_has_lax_s_value_and_gradients(
    batch, size, c_in, c_out, kernel, stride, padding):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, c_in))
  w = jax.random.normal(keys[1], (kernel, kernel, c_in, c_out))
  ours, ours_vjp = jax.vjp(
      lambda x, w: conv_grad.conv(x, w, (stride,) * 2, padding), x, w)
  theirs, theirs_vjp = jax.vjp(
      lambda x, w: lax.conv_general_dilated(
          x, w, (stride,) * 2, padding, dimension_numbers=conv_grad.NHWC),
      x, w)
  np.testing.assert_array_equal(ours, theirs)
  g = jax.random.normal(keys[2], ours.shape)
  assert conv_grad.relative_difference(theirs_vjp(g), ours_vjp(g)) < 1e-5


def test_conv_grad_times_the_matmul_of_tiny_maps_against_lax():
  *times, difference = conv_grad.measure_dense(2, 8, rounds=1)
  assert len(times) == 4 and all(t > 0 for t in times)
  assert difference < 1e-5


def test_the_peer_benchmarks_jcc_sides_match_ccs_settings(tmp_path):
  import argparse  # pylint: disable=g-import-not-at-top
  from benchmarks import peer_cc  # pylint: disable=g-import-not-at-top
  from jcc import validate  # pylint: disable=g-import-not-at-top
  npz = tmp_path / 'd.npz'
  np.savez(npz, images=np.zeros((256, 8, 8), np.uint8),
           labels=np.zeros(256, np.int64))
  args = argparse.Namespace(
      image_size=16, num_clusters=10, batch_size=128, epochs=20,
      widths=(32, 64, 128), projection_dim=128, learning_rate=1e-3,
      instance_temperature=0.5, cluster_temperature=1.0, jcc_crop_min=0.08,
      jcc_crop_from=32, jcc_crop_from_given=False)
  configs = {side: peer_cc.jcc_config(side, str(npz), args, seed=1)
             for side in peer_cc.SIDES if side != 'cc'}
  for config in configs.values():
    validate.check_fields(config)
    assert (config.seed, config.train.batch_size, config.train.num_epochs,
            config.dataset.image_size) == (1, 128, 20, 16)
  cc, paper = configs['jcc_cc'], configs['jcc_paper']
  # CC's terms alone, with CC's crops, heads as wide as its backbone, and
  # its temperatures; the paper adds reconstruction and KL.
  assert (cc.loss.reconstruction, cc.loss.kl) == (0.0, 0.0)
  assert paper.loss.reconstruction > 0 and paper.loss.kl > 0
  for config in (cc, paper):
    assert tuple(config.augment.crop_scale) == (0.08, 1.0)
    assert config.dataset.crop_from_size == 32  # from the original, as CC
    assert config.model.head_hidden == 128
    # CC's optimiser and heads, whatever the config's recipe.
    assert (config.train.optimizer, config.train.weight_decay,
            config.train.lr_schedule, config.train.lr_warmup_epochs,
            config.model.head_batchnorm) == ('adam', 0.0, 'constant', 0,
                                             False)
    assert not config.loss.neighbor_consistency
    assert not config.train.selflabel_epochs
  # jcc_config keeps its own crops unless --jcc-crop-from is given.
  own = importlib.import_module('jcc.configs.cifar10_small').get_config()
  assert (configs['jcc_config'].dataset.crop_from_size ==
          own.dataset.crop_from_size)
  args.jcc_crop_from, args.jcc_crop_from_given = 0, True
  assert peer_cc.jcc_config('jcc_config', str(npz), args,
                            seed=1).dataset.crop_from_size == 0


def test_gpu_train_reads_a_converted_set_and_trains_either_recipe(tmp_path):
  import argparse
  from benchmarks import gpu_train
  from jcc import convert
  from jcc import validate
  rng = np.random.default_rng(0)
  np.savez(tmp_path / 'x.npz', images=rng.integers(
      0, 256, (40, 32, 32, 3), dtype=np.uint8), labels=np.arange(40) % 10)
  convert.convert(str(tmp_path / 'x.npz'), str(tmp_path / 'set'), 32,
                  show_progress=False)
  args = argparse.Namespace(backbone='resnet18_cifar', batch_size=256,
                            compute_dtype='bfloat16', recipe='config')
  for data, name in ((tmp_path / 'x.npz', 'npz'), (tmp_path / 'set',
                                                    'converted')):
    assert gpu_train.count_images(str(data)) == 40
    config = gpu_train.run_config(str(data), args)
    assert config.dataset.name == name
    validate.check_fields(config)
  assert config.train.optimizer == 'adam'  # the config's
  args.recipe = 'simclr'
  config = gpu_train.run_config(str(tmp_path / 'set'), args)
  assert (config.train.optimizer, config.train.lr_schedule,
          config.model.head_batchnorm) == ('sgd', 'cosine', True)
  assert config.train.learning_rate == pytest.approx(0.2)  # batch 256
