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


def test_training_batches_carry_the_images_the_views_are_cut_from():
  ds = sources.load_dataset(_config(image_size=8, crop_from_size=16))
  assert ds.images.shape == (1797, 8, 8, 1)
  assert ds.crop_source.shape == (1797, 16, 16, 1)
  # The same pictures at two sizes (bilinear keeps the mean brightness).
  assert abs(ds.crop_source.mean() - ds.images.mean()) < 2.0
  batch = next(pipeline.host_batches(ds, 32, seed=0, start_step=0,
                                     num_steps=1))
  np.testing.assert_array_equal(batch['images'],
                                ds.crop_source[batch['indices']])
  assert sources.load_dataset(_config()).crop_source is None
  # Arrays no larger than image_size: nothing to cut from but themselves.
  given = sources.from_arrays(np.zeros((4, 8, 8), np.uint8))
  assert sources.load_dataset(_config(name='arrays', crop_from_size=32),
                              given).crop_source is None
  given = sources.from_arrays(np.zeros((4, 20, 20), np.uint8))
  assert sources.load_dataset(_config(name='arrays', crop_from_size=32),
                              given).crop_source.shape == (4, 20, 20, 1)
  assert sources.load_dataset(
      _config(image_size=8, crop_from_size=8)).crop_source is None


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


def test_an_array_and_a_file_of_one_picture_become_the_same_grey(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  pictures = rng.integers(0, 256, (3, 20, 14, 3), dtype=np.uint8)
  for i, picture in enumerate(pictures):
    Image.fromarray(picture).save(tmp_path / f'{i}.png')
  _, from_files = sources.load_predict_images(str(tmp_path), 8, 1)
  _, from_array = sources.load_predict_images(pictures, 8, 1)
  np.testing.assert_array_equal(from_array, from_files)
  # Pillow's luma, not the channels' mean.
  np.testing.assert_array_equal(
      sources.rgb_to_gray(pictures)[..., 0],
      [np.asarray(Image.fromarray(p).convert('L')) for p in pictures])


def test_alpha_is_dropped_from_arrays_as_from_files():
  rng = np.random.default_rng(1)
  rgba = rng.integers(0, 256, (2, 6, 6, 4), dtype=np.uint8)
  np.testing.assert_array_equal(sources.as_nhwc_uint8(rgba, 'X'),
                                rgba[..., :3])
  np.testing.assert_array_equal(sources.as_nhwc_uint8(rgba[..., 2:], 'X'),
                                rgba[..., 2:3])
  with pytest.raises(errors.DataError, match=r'C 1-4'):
    sources.as_nhwc_uint8(np.zeros((2, 6, 6, 5), np.uint8), 'X')


@pytest.mark.parametrize('damage', ['truncated', 'bad_crc', 'not_an_array'])
def test_a_damaged_npz_is_one_line_in_training_and_predict(tmp_path, damage):
  import zipfile  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'd.npz'
  images = np.random.default_rng(0).integers(0, 256, (20, 8, 8), np.uint8)
  np.savez(path, images=images)
  data = bytearray(path.read_bytes())
  if damage == 'truncated':  # still starts with PK
    data = data[:len(data) // 2]
  elif damage == 'bad_crc':
    start = data.index(images.tobytes()[:16])
    data[start] ^= 0xFF
  path.write_bytes(bytes(data))
  if damage == 'not_an_array':
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('images.npy', 'text, not an array')
  config = ml_collections.ConfigDict({'name': 'npz', 'path': str(path),
                                      'image_size': 8, 'num_clusters': 2})
  with pytest.raises(errors.DataError) as raised:
    sources.load_dataset(config)
  assert str(path) in str(raised.value) and '\n' not in str(raised.value)
  with pytest.raises(errors.DataError):
    sources.check_predict_input(str(path))


def test_files_are_decoded_again_at_the_size_views_are_cut_from(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        tmp_path / f'{i}.png')
  config = _config(name='folder', path=str(tmp_path), image_size=8,
                   crop_from_size=32, num_clusters=2)
  ds = sources.load_dataset(config)
  whole = sources.load_dataset(_config(name='folder', path=str(tmp_path),
                                       image_size=32, num_clusters=2))
  # The originals, not the 8×8 images made larger; and the 8×8 images as
  # --mode=predict decodes them.
  np.testing.assert_array_equal(ds.crop_source, whole.images)
  np.testing.assert_array_equal(
      ds.images, sources.load_predict_images(str(tmp_path), 8, 3)[1])
