"""jcc.sources and jcc.pipeline: sources, resizing and the (seed, epoch) training order."""

import ml_collections
import numpy as np
import pytest

from jcc import errors
from jcc import pipeline
from jcc import sources


def _config(**kw):
  return ml_collections.ConfigDict(
      dict(dict(name='digits', path='', image_size=8, num_clusters=10,
                skip_bad_images=True), **kw))


def test_digits_is_the_real_bundled_set():
  ds = sources.load_dataset(_config())
  assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
  assert ds.images.max() == 255 and ds.images.min() == 0
  assert sorted(np.unique(ds.labels)) == list(range(10))


def test_resize_changes_size_only():
  ds = sources.load_dataset(_config(image_size=16))
  assert ds.images.shape == (1797, 16, 16, 1) and ds.images.dtype == np.uint8
  small = sources.load_dataset(_config())
  # Mean brightness is kept by bilinear resizing (up to rounding).
  assert abs(ds.images.mean() - small.images.mean()) < 2.0


@pytest.mark.parametrize('shape', [(6, 5, 5), (6, 5, 5, 1), (6, 5, 5, 3)])
def test_npz_reads_nhw_and_nhwc(tmp_path, shape):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  path = tmp_path / 'x.npz'
  np.savez(path, images=images, labels=np.arange(6))
  ds = sources.load_dataset(_config(name='npz', path=str(path), image_size=5))
  assert ds.images.shape == (6, 5, 5, shape[3] if len(shape) == 4 else 1)
  np.testing.assert_array_equal(ds.images.reshape(shape), images)
  np.testing.assert_array_equal(ds.labels, np.arange(6))


def test_npz_without_labels(tmp_path):
  path = tmp_path / 'x.npz'
  np.savez(path, images=np.zeros((3, 4, 4), np.uint8))
  assert sources.load_dataset(
      _config(name='npz', path=str(path), image_size=4)).labels is None


def test_clear_errors_for_missing_or_bad_data(tmp_path):
  with pytest.raises(errors.DataError, match='Unknown dataset'):
    sources.load_dataset(_config(name='cifar11'))
  with pytest.raises(errors.DataError, match='dataset.path'):
    sources.load_dataset(_config(name='npz', path=str(tmp_path / 'none.npz')))
  with pytest.raises(errors.DataError, match='needs a file'):
    sources.load_dataset(_config(name='npz'))
  path = tmp_path / 'f.npz'
  np.savez(path, images=np.zeros((3, 4, 4), np.float32))
  with pytest.raises(errors.DataError, match='uint8'):
    sources.load_dataset(_config(name='npz', path=str(path)))


def test_training_order_is_a_function_of_seed_and_epoch():
  a = pipeline.epoch_order(100, seed=0, epoch=3)
  np.testing.assert_array_equal(a, pipeline.epoch_order(100, seed=0, epoch=3))
  assert not np.array_equal(a, pipeline.epoch_order(100, seed=0, epoch=4))
  assert not np.array_equal(a, pipeline.epoch_order(100, seed=1, epoch=3))
  # Steps of one epoch cover distinct examples; the partial batch is dropped.
  steps = [pipeline.train_batch_indices(100, 30, seed=0, step=s) for s in range(3)]
  flat = np.concatenate(steps)
  assert len(np.unique(flat)) == 90
  np.testing.assert_array_equal(
      pipeline.train_batch_indices(100, 30, seed=0, step=3),
      pipeline.epoch_order(100, 0, 1)[:30])


def test_npz_source_keeps_real_pixels_exact(shared_data):
  import hashlib  # pylint: disable=g-import-not-at-top
  path = shared_data / 'cifar10_lossless_5k.npz'
  ds = sources.load_dataset(_config(name='npz', path=str(path), image_size=32))
  assert ds.images.shape == (5000, 32, 32, 3)
  # The content hash that ../shared/data/README.md gives for this file.
  digest = hashlib.sha256(ds.images.tobytes()).hexdigest()[:16]
  assert digest == '492d3adcf78ecda8'
  assert sorted(np.unique(ds.labels)) == list(range(10))
  # ...and so do the training and evaluation pipelines built on it.
  for batch in pipeline.train_batches(ds, 1000, 0, 0, 5):
    np.testing.assert_array_equal(batch['images'], ds.images[batch['indices']])
  rows = [batch[mask] for batch, mask in pipeline.eval_batches(ds.images, 1024)]
  digest = hashlib.sha256(np.concatenate(rows).tobytes()).hexdigest()[:16]
  assert digest == '492d3adcf78ecda8'


def test_float_images_get_the_conversion_their_range_needs():
  with pytest.raises(errors.DataError, match=r'\(x \* 255\)\.round\(\)'):
    sources.as_nhwc_uint8(np.full((2, 4, 4), 0.5), 'X')
  with pytest.raises(errors.DataError,
                     match=r'span 0-255: x\.round\(\)\.astype'):
    sources.as_nhwc_uint8(np.full((2, 4, 4), 200.0), 'X')
