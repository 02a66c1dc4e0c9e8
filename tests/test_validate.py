"""The config check: a rule for every field, one line for every mistake."""

import os
import subprocess
import sys

import ml_collections
import pytest

from jcc.configs import default
from jcc import validate
from jcc.errors import ConfigError
from tests import cli
from tests.conftest import REPO_ROOT, tiny_config

# At least one bad value per field of configs/default.py.
BAD_VALUES = {
    'seed': [-1, 2**32, 1.5],
    'dataset.name': ['cifar11', 3],
    'dataset.path': [3],
    'dataset.tfds_data_dir': [None],
    'dataset.tfds_download': ['yes', 1],
    'dataset.manual_dir': [1.0],
    'dataset.use_unlabelled': [0],
    'dataset.skip_bad_images': ['no'],
    'dataset.stream': ['yes', 1],
    'dataset.image_size': [0, 1, 1000, 16.0],
    'dataset.crop_from_size': [-1, 4, 1000, 16.0],
    'dataset.num_clusters': [1, 0, 2.5],
    'model.backbone': ['vgg', ''],
    'model.convnet_widths': [(), (16, 0), (16.5,), 16],
    'model.head_hidden': [0],
    'model.projection_dim': [0, -3],
    'model.decoder_width': [0],
    'augment.crop_scale': [(2, 3), (0.0, 1.0), (0.9, 0.5), (0.5,)],
    'augment.crop_ratio': [(0, 1), (2.0, 1.0)],
    'augment.flip_prob': [-0.1, 1.5],
    'augment.rotation': [-1.0, 200.0, float('nan')],
    'augment.shear': [-5.0, 90.0],
    'augment.brightness': [-0.1, float('inf')],
    'augment.contrast': [-1.0],
    'augment.saturation': [-0.5],
    'augment.hue': [0.6, -0.1],
    'augment.jitter_prob': [2.0],
    'augment.jitter_random_order': [1],
    'augment.grayscale_prob': [-1.0],
    'augment.blur_prob': [1.01],
    'augment.blur_sigma': [(0.0, 1.0), (2.0, 1.0)],
    'augment.noise_stddev': [-0.01],
    'loss.instance': [-1.0, float('nan')],
    'loss.cluster': [-0.5],
    'loss.entropy': [-2.0],
    'loss.reconstruction': [float('inf')],
    'loss.kl': [-0.1],
    'loss.neighbor_consistency': [-1.0],
    'loss.neighbor_instance': [float('nan')],
    'loss.instance_temperature': [0.0, -0.5],
    'loss.cluster_temperature': [0.0],
    'loss.alpha': [0.0],
    'distributed.coordinator_address': ['localhost', 'host:0', 'host:70000',
                                        ':1234', 'host:port', 1234],
    'distributed.num_processes': [0, -2, 2.0],
    'distributed.process_id': [-2, 'one'],
    'distributed.initialization_timeout_seconds': [0],
    'distributed.peer_timeout_seconds': [1, 0],
    'train.batch_size': [1, 0],
    'train.num_epochs': [0, -5],
    'train.compute_dtype': ['float16'],
    'train.learning_rate': [-3e-4, 0.0, float('nan'), float('inf')],
    'train.lr_schedule': ['linear'],
    'train.warmup_epochs': [-1],
    'train.kmeans_n_init': [0],
    'train.target_update_every_steps': [0],
    'train.num_neighbors': [0, 2.0],
    'train.neighbor_update_every_steps': [-1],
    'train.selflabel_epochs': [-1, 1.5],
    'train.selflabel_threshold': [1.5, -0.1],
    'train.selflabel_balance': [1],
    'train.selflabel_fixed': ['yes', 0],
    'train.accept_changed_settings': ['yes', 1],
    'train.selflabel_weight': [-1.0],
    'train.selflabel_cutout': [1.5, -0.1],
    'train.min_steps': [-1, 2.5],
    'train.log_every_steps': [0],
    'train.eval_every_steps': [-1],
    'train.checkpoint_every_steps': [0],
    'train.max_checkpoints': [0],
    'train.optimizer': ['rmsprop', 0],
    'train.momentum': [-0.1, 1.01],
    'train.momentum_encoder': [1.0, -0.1, 'yes', float('nan')],
    'train.warmup_terms': ['cluster', 1, None],
    'train.weight_decay': [-1e-4, float('nan')],
    'train.lr_warmup_epochs': [-1, 0.5],
    'model.head_batchnorm': [1, 'yes'],
    'train.eval_batch_size': [0],
    'predict.input': [7],
    'predict.output': [7],
}


def _fields(config):
  return dict(validate.flatten(config))


def test_every_field_of_the_default_config_has_a_rule():
  # A new field in configs/default.py without a rule in validate.FIELDS
  # fails here, and one without a bad value in BAD_VALUES below.
  assert set(validate.FIELDS) == set(_fields(default.get_config()))
  assert set(BAD_VALUES) == set(validate.FIELDS)


def test_every_dataset_config_passes():
  for path in sorted((REPO_ROOT / 'configs').glob('*.py')):
    if path.stem != '__init__':
      module = __import__(f'jcc.configs.{path.stem}', fromlist=['get_config'])
      validate.check_fields(module.get_config())


def _with(field, value):
  """tiny_config with ``field`` set to ``value``, past ml_collections' types."""
  config = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
  *groups, leaf = field.split('.')
  node = config
  for group in groups:
    node = node[group]
  node[leaf] = value
  return config


@pytest.mark.parametrize('field,value', [
    (field, value) for field, values in BAD_VALUES.items()
    for value in values])
def test_a_bad_value_names_the_field_and_what_it_must_be(field, value):
  with pytest.raises(ConfigError) as raised:
    validate.check_fields(_with(field, value))
  message = str(raised.value)
  assert message.startswith(f'config.{field}={value!r}: must be '), message
  assert '\n' not in message


def test_settings_that_only_clash_together():
  with pytest.raises(ConfigError, match='batch_size=8 is smaller than'):
    validate.check_against_data(_with('train.batch_size', 8), 1797, 1)
  config = tiny_config()
  for name in validate.LOSS_WEIGHTS:
    config.loss[name] = 0.0
  with pytest.raises(ConfigError, match='every weight is 0'):
    validate.check_fields(config)
  config = tiny_config()
  config.distributed.num_processes = 2
  config.distributed.process_id = 2
  with pytest.raises(ConfigError, match='process_id=2 is not below'):
    validate.check_fields(config)
  config = tiny_config()
  config.dataset.image_size = 16
  config.dataset.crop_from_size = 12
  with pytest.raises(ConfigError, match='crop_from_size=12 is below'):
    validate.check_fields(config)


# The command line: exit 2, one line, no traceback, and the workdir untouched.
CLI_MISTAKES = [
    ('--config.train.num_epochs=0', 'train.num_epochs=0'),
    ('--config.dataset.image_size=1', 'dataset.image_size=1'),
    ('--config.dataset.image_size=1000', 'an integer from 8 to 512'),
    ('--config.model.convnet_widths=()', 'model.convnet_widths=()'),
    ('--config.train.warmup_epochs=-1', 'train.warmup_epochs=-1'),
    ('--config.augment.crop_scale=(2,3)', 'augment.crop_scale=(2, 3)'),
    ('--config.train.learning_rate=-1e-3', 'train.learning_rate=-0.001'),
    ('--config.train.max_checkpoints=0', 'train.max_checkpoints=0'),
    ('--config.model.backbone=vgg', "model.backbone='vgg'"),
    ('--config.seed=-1', 'seed=-1'),
    ('--config.train.target_update_every_steps=0',
     'train.target_update_every_steps=0'),
    ('--config.train.kmeans_n_init=0', 'train.kmeans_n_init=0'),
    ('--config.loss.instance_temperature=0', 'loss.instance_temperature=0'),
    ('--config.model.projection_dim=0', 'model.projection_dim=0'),
]


@pytest.mark.parametrize('flag,expected', CLI_MISTAKES)
def test_the_flag_parser_and_main_refuse_each_mistake_in_one_line(
    tmp_path, flag, expected):
  finished = cli.run_main(f'--config={REPO_ROOT}/configs/digits.py',
                          f'--workdir={tmp_path / "w"}', flag)
  assert finished.status == 2, finished.stderr[-2000:]
  assert 'Traceback' not in finished.stderr
  assert finished.last_line.startswith('jcc: error: config.'), finished.stderr
  assert expected in finished.last_line
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_the_command_line_refuses_each_mistake_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  pending = list(enumerate(CLI_MISTAKES))
  while pending:  # two at a time: one per core
    batch, pending = pending[:2], pending[2:]
    runs = [(i, flag, expected, subprocess.Popen(
        [sys.executable, '-m', 'jcc.main', '--config=configs/digits.py',
         f'--workdir={tmp_path / str(i)}', flag], cwd=REPO_ROOT, env=env,
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for i, (flag, expected) in batch]
    for i, flag, expected, run in runs:
      _, err = run.communicate(timeout=300)
      assert run.returncode == 2, (flag, err[-2000:])
      assert 'Traceback' not in err, (flag, err[-2000:])
      last = err.strip().splitlines()[-1]
      assert last.startswith('jcc: error: config.') and expected in last, (
          flag, last)
      assert not (tmp_path / str(i)).exists(), flag
