"""benchmarks/quality.py: the configs it builds are the ones it claims to run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import quality
from jcc import sources


def test_overrides_reach_the_config_with_the_field_type():
  config = quality.dataset_config(
      'digits', ['train.num_epochs=3', 'augment.rotation=15',
                 'loss.kl=0.5'])
  assert config.train.num_epochs == 3
  assert config.augment.rotation == 15.0
  assert isinstance(config.augment.rotation, float)
  assert config.loss.kl == 0.5


def test_variants_change_only_their_terms():
  assert quality.VARIANTS['cc'] == {'loss.reconstruction': 0.0, 'loss.kl': 0.0}
  assert quality.VARIANTS['full'] == {}
  assert quality.VARIANTS['cc+rec'] == {'loss.kl': 0.0}
  assert quality.VARIANTS['cc+kl'] == {'loss.reconstruction': 0.0}
  neighbors = quality.VARIANTS['full+neighbors']
  assert set(neighbors) == {'loss.neighbor_consistency',
                            'loss.neighbor_instance'}
  assert all(w > 0 for w in neighbors.values())
  assert quality.VARIANTS['full+selflabel'] == {'train.selflabel_epochs': 10}
  assert quality.VARIANTS['full+both'] == {**neighbors,
                                           'train.selflabel_epochs': 10}
  assert quality.VARIANTS['full+selflabel_fixed'] == {
      'train.selflabel_epochs': 10, 'train.selflabel_fixed': True}
  assert quality.VARIANTS['full+momentum'] == {'train.momentum_encoder': 0.99}
  # Each variant starts from the paper's four terms, also where the
  # dataset's config trains without one of them (the sets whose config
  # is built without reading their images).
  for name in ('digits', 'mnist_test', 'cifar10_test'):
    terms = quality.dataset_config(name, []).loss
    assert terms.reconstruction > 0 and terms.kl > 0, name
  # Every field exists in the config.
  config = quality.dataset_config('digits', [])
  for changes in quality.VARIANTS.values():
    for field in changes:
      group, leaf = field.split('.')
      assert leaf in config[group]


def test_fashion_mnist_test_set_is_the_10000_test_images():
  if not os.path.isdir(quality.FASHION_MNIST):
    pytest.skip(f'{quality.FASHION_MNIST} absent (apt-get install '
                'dataset-fashion-mnist)')
  config = quality.dataset_config('fashion_mnist_test', [])
  assert all(name.startswith('t10k-')
             for name in os.listdir(config.dataset.path))
  ds = sources.load_dataset(config.dataset)
  size = config.dataset.image_size
  assert ds.images.shape == (10000, size, size, 1)
  np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)


def test_fashion_mnist_test_folder_is_shared_and_removed_at_exit():
  # One folder for every Fashion-MNIST run of the benchmark, removed at
  # exit: none is left behind in /tmp.
  script = ('from benchmarks import quality\n'
            'a = quality.fashion_mnist_test_folder()\n'
            'assert a == quality.fashion_mnist_test_folder()\n'
            'import os; assert os.path.isdir(a)\n'
            'print(a)\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, '-c', script], cwd=root, check=True,
                        capture_output=True, text=True)
  folder = done.stdout.strip().splitlines()[-1]
  assert folder and not os.path.exists(folder)


def test_table_from_the_json_lines_of_two_workers(tmp_path):
  def record(variant, seed, acc, dec_acc=None, seconds=10.0, kmeans_acc=None,
             confident=None):
    dec = None if dec_acc is None else dict(acc=dec_acc, nmi=0.5, ari=0.5)
    kmeans = (None if kmeans_acc is None else
              dict(acc=kmeans_acc, nmi=0.5, ari=0.5))
    return quality.json_record(
        'toy', variant, seed, seconds,
        dict(cluster_head=dict(acc=acc, nmi=0.5, ari=0.5), dec=dec,
             kmeans=kmeans, confident=confident))
  worker_0 = [record('full', 0, 0.8, 0.7, 30.0, 0.75,
                     dict(threshold=0.99, fraction=0.2, acc=0.9)),
              record('full', 1, 0.6, 0.5, 50.0, 0.55,
                     dict(threshold=0.99, fraction=0.4, acc=0.9))]
  worker_1 = [record('kmeans', 0, 0.4), record('kmeans', 1, 0.2),
              record('cc', 0, 0.5, 0.4), record('cc', 1, 0.7, 0.6)]
  # A record written before --json kept k-means on the embeddings.
  del worker_1[-1]['kmeans']
  paths = []
  for i, records in enumerate((worker_0, worker_1)):
    paths.append(str(tmp_path / f'{i}.jsonl'))
    with open(paths[-1], 'w') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in records))
  rows = quality.tables_from_json(paths).splitlines()
  assert rows[0] == 'toy: 2 seeds, mean ± std'
  assert 'k-means on embeddings ACC' in rows[1]
  # k-means first, then the variants in their order; std is the sample std.
  assert [r.split(' | ')[0] for r in rows[3:]] == ['| kmeans', '| cc',
                                                  '| full']
  assert rows[3].startswith('| kmeans | 0.300 ± 0.141 |')
  assert rows[3].endswith('| – | – | – | – | – | – | 10 |')
  assert rows[4].endswith('| 0.500 ± 0.000 | – | – | – | 10 |')
  assert rows[5].startswith('| full | 0.700 ± 0.141 |')
  # The confident share and their ACC, where the records have them.
  assert rows[5].endswith('| 0.600 ± 0.141 | 0.500 ± 0.000 | '
                          '0.500 ± 0.000 | 0.650 ± 0.141 | 0.300 ± 0.141 | '
                          '0.900 ± 0.000 | 40 |')


def test_json_record_keeps_every_assignment():
  # All three assignments: the benchmark's files must say whether DEC beats
  # k-means on the same embeddings.
  metrics = dict(acc=0.5, nmi=0.4, ari=0.3)
  confident = dict(threshold=0.99, fraction=0.25, acc=0.8)
  result = dict(cluster_head=metrics, dec=None, kmeans=metrics,
                num_examples=10, confident=confident)
  record = quality.json_record('toy', 'full', 2, 1.5, result)
  assert record == dict(dataset='toy', variant='full', seed=2, seconds=1.5,
                        cluster_head=metrics, dec=None, kmeans=metrics,
                        confident=confident)
  json.dumps(record)


def test_the_1500_image_subset_is_fixed_and_drawn_from_the_test_set():
  path = os.path.join(quality.SHARED, 'cifar10_test_jpeg.npz')
  if not os.path.exists(path):
    pytest.skip(f'{path} absent (../shared/data is not beside this checkout)')
  subsets = [sources.load_dataset(quality.dataset_config(
      'cifar10_test_1500', []).dataset) for _ in range(2)]
  np.testing.assert_array_equal(subsets[0].images, subsets[1].images)
  full = sources.load_dataset(quality.dataset_config('cifar10_test',
                                                     []).dataset)
  assert subsets[0].images.shape == (1500,) + full.images.shape[1:]
  # Every image of the subset is one of the test set's, with its label.
  rows = {image.tobytes(): label
          for image, label in zip(full.images, full.labels)}
  assert all(rows[image.tobytes()] == label for image, label in
             zip(subsets[0].images, subsets[0].labels))
  assert len(set(subsets[0].labels)) == 10


def test_overrides_take_json_values_and_plain_text_for_text_fields():
  config = quality.dataset_config('digits', [])
  quality.set_overrides(config, ['train.num_epochs=7',
                                 'train.warmup_terms=instance',
                                 'model.convnet_widths=[4, 8]',
                                 'train.optimizer="sgd"'])
  assert config.train.num_epochs == 7
  assert config.train.warmup_terms == 'instance'
  assert tuple(config.model.convnet_widths) == (4, 8)
  assert config.train.optimizer == 'sgd'
