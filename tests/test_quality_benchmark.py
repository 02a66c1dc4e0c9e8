"""benchmarks/quality.py: the configs it builds are the ones it claims to run."""

import os

import numpy as np
import pytest

from benchmarks import quality
from jcc import data


def test_overrides_reach_the_config_with_the_field_type():
  config = quality.dataset_config(
      'digits', ['train.num_epochs=3', 'augment.rotation=15',
                 'loss.kl=0.5'])
  assert config.train.num_epochs == 3
  assert config.augment.rotation == 15.0
  assert isinstance(config.augment.rotation, float)
  assert config.loss.kl == 0.5


def test_variants_remove_only_their_terms():
  assert set(quality.VARIANTS['cc']) == {'reconstruction', 'kl'}
  assert quality.VARIANTS['full'] == ()
  assert set(quality.VARIANTS['cc+rec']) == {'kl'}
  assert set(quality.VARIANTS['cc+kl']) == {'reconstruction'}


def test_fashion_mnist_test_set_is_the_10000_test_images():
  if not os.path.isdir(quality.FASHION_MNIST):
    pytest.skip(f'{quality.FASHION_MNIST} absent (apt-get install '
                'dataset-fashion-mnist)')
  config = quality.dataset_config('fashion_mnist_test', [])
  assert all(name.startswith('t10k-')
             for name in os.listdir(config.dataset.path))
  ds = data.load_dataset(config.dataset)
  assert ds.images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)
