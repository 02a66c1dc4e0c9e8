"""Every config in configs/ loads, keeps the documented fields, and adds none."""

import importlib

import pytest

from jcc.configs import default
from jcc import validate
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p.stem for p in (REPO_ROOT / 'configs').glob('*.py')
                 if p.stem != '__init__')
REQUIRED = [
    'seed', 'dataset.name', 'dataset.path', 'dataset.image_size',
    'dataset.num_clusters', 'train.batch_size', 'train.num_epochs',
    'train.learning_rate', 'train.target_update_every_steps', 'loss.instance',
    'loss.cluster', 'loss.entropy', 'loss.reconstruction', 'loss.kl',
    'loss.instance_temperature', 'loss.cluster_temperature', 'model.backbone',
]


def _flat(config):
  return dict(validate.flatten(config))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_has_the_documented_fields_and_no_others(name):
  config = importlib.import_module(f'jcc.configs.{name}').get_config()
  fields = _flat(config)
  for field in REQUIRED:
    assert field in fields, f'{name} lacks {field}'
  # A dataset config only overrides: a typo would silently add a field.
  assert set(fields) == set(_flat(default.get_config())), name


def test_every_default_field_is_documented_in_a_comment():
  source = (REPO_ROOT / 'configs' / 'default.py').read_text().splitlines()
  for field in _flat(default.get_config()):
    leaf = field.split('.')[-1]
    line = next(i for i, text in enumerate(source)
                if f'.{leaf} = ' in text or text.strip().startswith(
                    f'config.{leaf} = '))
    window = '\n'.join(source[max(0, line - 8):line + 1])
    assert '#' in window, f'{field} has no comment near its definition'


def test_the_papers_method_is_one_switch_from_a_stronger_default():
  # configs/mnist.py adds the neighbour terms and self-labelling; ':paper'
  # removes them, and the quality benchmark's variants start from the
  # paper's method too.
  from benchmarks import quality
  from jcc.configs import mnist
  stronger, paper = mnist.get_config(), mnist.get_config('paper')
  assert stronger.loss.neighbor_consistency > 0
  changed = {field for field, value in _flat(stronger).items()
             if _flat(paper)[field] != value}
  assert changed == {'loss.neighbor_consistency', 'loss.neighbor_instance',
                     'train.selflabel_epochs'}
  assert paper == default.paper_method(mnist.get_config())
  full = quality.dataset_config('mnist_test', [])
  assert full.loss.neighbor_consistency == full.loss.neighbor_instance == 0
  with pytest.raises(ValueError, match=':paper'):
    mnist.get_config('papr')


@pytest.mark.parametrize('name', CONFIGS)
def test_a_config_beyond_the_paper_says_so_and_offers_the_paper(name):
  # configs/fashion_mnist.py builds on configs/mnist.py and silently
  # inherited its neighbour terms, while the README listed it among the
  # configs that train the paper's method.
  module = importlib.import_module(f'jcc.configs.{name}')
  paper = default.paper_method(module.get_config())  # it works in place
  if module.get_config() == paper:
    return
  assert module.get_config('paper') == paper, name
  assert ':paper' in (module.get_config.__doc__ or ''), name


# Beyond the optimiser, cifar10_small trains without the reconstruction
# term, for the epochs its time buys; :paper keeps the term.
@pytest.mark.parametrize('name, also_differ', [
    ('cifar10_small', {'loss.reconstruction', 'train.num_epochs'}),
    ('fashion_mnist', set())])
def test_paper_is_the_papers_method_with_adam(name, also_differ):
  cifar = importlib.import_module(f'jcc.configs.{name}')
  recipe, paper = cifar.get_config(), cifar.get_config('paper')
  assert (recipe.train.optimizer, recipe.model.head_batchnorm) == ('sgd',
                                                                  True)
  assert (paper.train.optimizer, paper.train.learning_rate,
          paper.train.weight_decay, paper.train.lr_schedule,
          paper.train.lr_warmup_epochs, paper.loss.instance_temperature,
          paper.model.head_batchnorm) == ('adam', 1e-3, 0.0, 'constant', 0,
                                          0.5, False)
  differ = {field for field, value in _flat(recipe).items()
            if _flat(paper)[field] != value}
  assert differ == {'train.optimizer', 'train.learning_rate',
                    'train.weight_decay', 'train.lr_schedule',
                    'train.lr_warmup_epochs', 'loss.instance_temperature',
                    'model.head_batchnorm'} | also_differ
  assert paper.loss.reconstruction == 1.0
  with pytest.raises(ValueError, match=':paper'):
    cifar.get_config('adam')


def test_simclrs_optimiser_scales_its_rate_with_the_batch():
  config = default.get_config()
  config.train.batch_size = 512
  default.simclr_optimizer(config)
  assert config.train.learning_rate == pytest.approx(0.4)  # SCAN's pretext
  assert (config.train.optimizer, config.train.lr_schedule,
          config.model.head_batchnorm) == ('sgd', 'cosine', True)
  small = importlib.import_module('jcc.configs.cifar10_small').get_config()
  assert small.train.learning_rate == pytest.approx(0.1)  # at batch 128


def test_the_paper_switch_works_on_the_command_line():
  from absl import flags
  from ml_collections import config_flags
  holder = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'test', flag_values=holder)
  holder(['prog', f'--config={REPO_ROOT}/configs/mnist.py:paper'])
  assert holder.config.loss.neighbor_instance == 0


def test_no_dataset_config_imports_another():
  # Each starts from default.py; shared recipes are named functions there,
  # so tuning one dataset never changes another's results.
  import ast  # pylint: disable=g-import-not-at-top
  for name in CONFIGS:
    tree = ast.parse((REPO_ROOT / 'configs' / f'{name}.py').read_text())
    imported = {alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and
                node.module == 'jcc.configs' for alias in node.names}
    assert imported <= {'default'}, (name, imported)

