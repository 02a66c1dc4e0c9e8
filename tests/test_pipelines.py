"""jcc.sources' registry and jcc.pipeline: every source under TFDS's mock data,
the folder layouts on files the tests write, and the train/eval pipelines."""

import importlib
import importlib.resources
import os
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jcc import convert
from jcc import errors
from jcc import losses
from jcc import objective
from jcc import pipeline
from jcc import sources
from jcc.sources import tfds as sources_tfds
from jcc import models
from jcc import workflows
from tests.conftest import REPO_ROOT, tiny_config, write_idx

# Sources that read TFDS when config.dataset.path is empty.
TFDS_SOURCES = ['cifar10', 'cifar100', 'stl10', 'imagenet10', 'imagenet_dogs',
                'mnist', 'fashion_mnist']
MOCK_EXAMPLES = 600  # per split: enough that each ImageNet subset is hit.


def _dataset_config(name, image_size=16, **overrides):
  config = importlib.import_module(f'jcc.configs.{name}').get_config().dataset
  config.image_size = image_size
  config.update(overrides)
  return config


@pytest.mark.parametrize('name', TFDS_SOURCES)
def test_tfds_source_under_mock_data(name, tfds):
  config = _dataset_config(name)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    ds = sources.load_dataset(config)
  k = sources.DATASETS[name].num_classes
  assert config.num_clusters == k, 'the config must use the benchmark K'
  channels = 1 if 'mnist' in name else 3
  assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
  assert ds.images.shape[1:] == (16, 16, channels)
  assert ds.labels.shape == (len(ds),)
  clustered = ds.labels[ds.cluster_indices]
  assert clustered.min() >= 0 and clustered.max() < k
  if name == 'stl10':
    # train+test labelled, plus the unlabelled split for the instance term.
    assert len(ds) == 2 * MOCK_EXAMPLES
    assert ds.instance_only.sum() == MOCK_EXAMPLES
    assert (ds.labels[ds.instance_only] == -1).all()
    assert len(ds.cluster_indices) == MOCK_EXAMPLES
  elif name.startswith('imagenet'):
    # ILSVRC's 1,000 classes filtered down to the subset's wnids.
    assert 0 < len(ds) < MOCK_EXAMPLES / 10
    assert ds.instance_only is None
  else:
    assert len(ds) == MOCK_EXAMPLES and ds.instance_only is None


def test_stl10_without_unlabelled(tfds):
  config = _dataset_config('stl10', use_unlabelled=False)
  with tfds.testing.mock_data(num_examples=20):
    ds = sources.load_dataset(config)
  assert len(ds) == 20 and ds.instance_only is None


@pytest.mark.parametrize('name', ['cifar10', 'imagenet10', 'mnist'])
def test_missing_tfds_dataset_says_where_and_how(name, tmp_path, tfds):
  del tfds  # installed: the dataset, not the package, is missing
  config = _dataset_config(name, tfds_data_dir=str(tmp_path))
  with pytest.raises(errors.DataError) as error:
    sources.load_dataset(config)
  message = str(error.value)
  assert str(tmp_path) in message and 'is not prepared' in message
  assert 'npz' in message and 'folder' in message
  assert ('manual_dir' if name == 'imagenet10' else 'tfds build') in message


def test_an_unprepared_tfds_dataset_leaves_no_folder_in_system_temp(
    tmp_path, system_temp_dir, tfds):
  # TFDS leaves an empty tmp*tfds folder per unprepared builder; the suite
  # sends them to its own temporary folder (conftest.system_temp_dir).
  del tfds
  before = set(system_temp_dir.glob('tmp*tfds'))
  with pytest.raises(errors.DataError):
    sources.load_dataset(_dataset_config('cifar10', tfds_data_dir=str(tmp_path)))
  assert set(system_temp_dir.glob('tmp*tfds')) == before


@pytest.mark.parametrize('name', ['cifar10', 'stl10', 'imagenet10', 'mnist'])
def test_a_tfds_dataset_converts_to_what_training_reads(name, tmp_path,
                                                        monkeypatch, tfds):
  config = _dataset_config(name, image_size=8)
  # Batches of 1,024 through tf.data: the set below spans several.
  monkeypatch.setattr(convert, 'CHUNK', 100)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    in_memory = sources.load_dataset(config)
    convert.convert(f'tfds:{name}', str(tmp_path / 'out'), 8,
                    show_progress=False)
  stored_config = _dataset_config('default', image_size=8)
  stored_config.update(name='converted', path=str(tmp_path / 'out'))
  stored = sources.load_dataset(stored_config)
  np.testing.assert_array_equal(stored.images, in_memory.images)
  np.testing.assert_array_equal(stored.labels, in_memory.labels)
  assert stored.class_names == in_memory.class_names
  if name == 'stl10':  # the unlabelled split trains the instance term alone
    np.testing.assert_array_equal(stored.instance_only,
                                  in_memory.instance_only)
  else:
    assert stored.instance_only is None


def test_a_tfds_dataset_too_large_to_hold_says_how_to_convert_it(
    monkeypatch, tfds):
  config = _dataset_config('cifar10', image_size=16, crop_from_size=32)
  # 60,000 × 3 × (16² + 32²) bytes: 230 MB
  monkeypatch.setattr(sources.streamed, 'memory_budget', lambda: 2 * 10**8)
  # TFDS's record of a prepared cifar10, which its mock data lacks.
  monkeypatch.setattr(sources_tfds, '_split_count',
                      lambda info, splits: 60_000)
  with tfds.testing.mock_data(num_examples=20):
    with pytest.raises(errors.DataError) as error:
      sources.load_dataset(config)
    message = str(error.value)
    assert '60,000 images' in message and '\n' not in message
    assert ('python -m jcc.convert --input=tfds:cifar10 --output=DIR '
            '--image_size=32') in message
    monkeypatch.setattr(sources.streamed, 'memory_budget', lambda: 3 * 10**8)
    assert len(sources.load_dataset(config)) == 20


def test_converting_a_tfds_dataset_names_its_own_flag(tmp_path, tfds):
  del tfds  # installed: the dataset, not the package, is missing
  with pytest.raises(errors.DataError) as error:
    convert.convert('tfds:cifar10', str(tmp_path / 'out'), 8,
                    show_progress=False, tfds_data_dir=str(tmp_path / 'tf'))
  message = str(error.value)
  assert 'tfds build cifar10' in message and '--tfds_data_dir=' in message
  assert '--config.dataset' not in message
  assert not (tmp_path / 'out').exists()


def test_converting_an_unknown_tfds_name_lists_the_known_ones(tmp_path):
  with pytest.raises(errors.UserError, match='cifar100, cifar10|cifar10, '
                     'cifar100') as error:
    convert.convert('tfds:digits', str(tmp_path / 'out'), 8)
  assert 'imagenet_dogs' in str(error.value)
  assert not (tmp_path / 'out').exists()


def test_every_registry_entry_has_a_config_or_a_test():
  tested = set(TFDS_SOURCES) | {'digits', 'npz', 'folder', 'tiny_imagenet',
                                'arrays',  # tests/test_api.py
                                'converted'}  # tests/test_streamed.py
  assert set(sources.DATASETS) == tested


def test_in_memory_arrays_come_only_from_python():
  config = _dataset_config('default')
  config.name = 'arrays'
  with pytest.raises(errors.DataError, match=r'Clusterer\.fit\(X\)'):
    sources.load_dataset(config)
  dataset = sources.from_arrays(np.zeros((3, 5, 5), np.uint8), [0, 1, 1])
  assert dataset.name == 'arrays' and dataset.images.shape == (3, 5, 5, 1)
  with pytest.raises(errors.DataError, match=r'^y has shape \(2,\)'):
    sources.from_arrays(np.zeros((3, 5, 5), np.uint8), [0, 1])


def _write_jpeg(path, rng, size=20, mode='RGB'):
  shape = (size, size, 3) if mode == 'RGB' else (size, size)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def test_tiny_imagenet_folder_layout(tmp_path):
  rng = np.random.default_rng(0)
  wnids = ['n02', 'n01', 'n03']  # labels follow the sorted wnids
  for wnid in wnids:
    folder = tmp_path / 'train' / wnid / 'images'
    folder.mkdir(parents=True)
    for i in range(int(wnid[-1]) + 1):  # n01: 2 images, n02: 3, n03: 4
      _write_jpeg(folder / f'{wnid}_{i}.JPEG', rng,
                  mode='L' if i == 0 else 'RGB')  # some are grayscale
  (tmp_path / 'train' / 'n01' / 'images' / 'broken.JPEG').write_bytes(b'no')
  ds = sources.load_dataset(_dataset_config('tiny_imagenet', 12,
                                         path=str(tmp_path)))
  assert ds.images.shape == (9, 12, 12, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ds.labels), [2, 3, 4])
  rows = sources.load_dataset(_dataset_config(
      'tiny_imagenet', 12, path=str(tmp_path), stream=True))
  np.testing.assert_array_equal(rows.images[:], ds.images)
  np.testing.assert_array_equal(rows.labels, ds.labels)


def test_tiny_imagenet_missing_folder_names_the_download(tmp_path):
  with pytest.raises(errors.DataError, match='tiny-imagenet-200'):
    sources.load_dataset(_dataset_config('tiny_imagenet', path=str(tmp_path)))


def test_imagenet_subset_from_an_ilsvrc_train_folder(tmp_path):
  rng = np.random.default_rng(0)
  wnids = (importlib.resources.files('jcc') / 'wnids' /
           'imagenet10.txt').read_text().split()
  for wnid in wnids + ['n99999999']:  # one class outside the subset
    (tmp_path / wnid).mkdir()
    _write_jpeg(tmp_path / wnid / 'a.JPEG', rng, size=30)
  ds = sources.load_dataset(_dataset_config('imagenet10', 16,
                                         path=str(tmp_path)))
  assert ds.images.shape == (10, 16, 16, 3)
  np.testing.assert_array_equal(ds.labels, np.arange(10))  # published order
  (tmp_path / wnids[3] / 'a.JPEG').unlink()
  os.rmdir(tmp_path / wnids[3])
  with pytest.raises(errors.DataError, match=wnids[3]):
    sources.load_dataset(_dataset_config('imagenet10', 16, path=str(tmp_path)))


def test_mnist_from_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  train_images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  test_images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
  write_idx(tmp_path / 'train-images-idx3-ubyte.gz', train_images)
  write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.arange(5))
  write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', test_images)
  write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', np.arange(3) + 5)
  ds = sources.load_dataset(_dataset_config('mnist', 28, path=str(tmp_path)))
  np.testing.assert_array_equal(
      ds.images[..., 0], np.concatenate([train_images, test_images]))
  np.testing.assert_array_equal(ds.labels, np.arange(8))
  (tmp_path / 'bad-idx').write_bytes(b'\x01\x02\x03\x04')
  with pytest.raises(errors.DataError, match='magic'):
    sources.read_idx(str(tmp_path / 'bad-idx'))


FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


def test_real_fashion_mnist_idx_files():
  if not os.path.isdir(FASHION_MNIST):
    pytest.skip(f'{FASHION_MNIST} absent (apt-get install '
                'dataset-fashion-mnist)')
  ds = sources.load_dataset(_dataset_config('fashion_mnist', 28,
                                         path=FASHION_MNIST))
  assert ds.images.shape == (70000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.labels), [7000] * 10)


# -- the pipelines --------------------------------------------------------


def _numbered_dataset(n):
  """Image i is filled with the value i % 256, so a batch shows its indices."""
  images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[
      :, None, None, None], (n, 2, 2, 1)).copy()
  return sources.ImageDataset('numbered', images, None)


def test_train_batches_follow_the_seed_epoch_order_and_split_per_host():
  ds = _numbered_dataset(100)
  steps = list(zip(range(7), (
      (b['images'], b['indices']) for b in pipeline.train_batches(
          ds, 30, 0, 0, 7))))
  for step_index, (images, indices) in steps:
    np.testing.assert_array_equal(
        indices, pipeline.train_batch_indices(100, 30, 0, step_index))
    np.testing.assert_array_equal(images[:, 0, 0, 0], indices % 256)
  # Two hosts: each gets its half of every global batch.
  halves = [[(b['images'], b['indices']) for b in pipeline.train_batches(
      ds, 30, 0, 2, 5, process_index=i, process_count=2)] for i in range(2)]
  for (a_images, a_idx), (b_images, b_idx), (_, (images, idx)) in zip(
      halves[0], halves[1], steps[2:5]):
    assert a_idx.shape == (15,)
    np.testing.assert_array_equal(np.concatenate([a_idx, b_idx]), idx)
    np.testing.assert_array_equal(np.concatenate([a_images, b_images]),
                                  images)


def test_train_batches_resume_mid_epoch():
  ds = _numbered_dataset(100)
  whole = [b['indices'] for b in pipeline.train_batches(ds, 30, 3, 0, 8)]
  resumed = [b['indices'] for b in pipeline.train_batches(ds, 30, 3, 4, 8)]
  for a, b in zip(whole[4:], resumed, strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('num,batch', [(10, 4), (8, 4), (3, 8)])
def test_eval_batches_visit_every_example_once(num, batch):
  images = _numbered_dataset(num).images
  seen = []
  for padded, mask in pipeline.eval_batches(images, batch):
    assert padded.shape == (batch, 2, 2, 1) and mask.shape == (batch,)
    assert not padded[~mask].any()
    seen.append(padded[mask][:, 0, 0, 0])
  np.testing.assert_array_equal(np.concatenate(seen), np.arange(num))


@pytest.mark.parametrize('num', [10, 8, 3, 13])
def test_hosts_read_their_own_rows_of_each_eval_batch(num):
  images = _numbered_dataset(num).images
  whole = list(pipeline.eval_batches(images, 4))
  hosts = [list(pipeline.eval_batches(images, 4, i, 2)) for i in range(2)]
  for k, (padded, mask) in enumerate(whole):
    parts = [hosts[i][k] for i in range(2)]
    assert all(part.shape == (2, 2, 2, 1) for part, _ in parts)
    np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]),
                                  padded)
    for _, host_mask in parts:  # every host knows the global mask
      np.testing.assert_array_equal(host_mask, mask)
  assert all(len(h) == len(whole) for h in hosts)
  with pytest.raises(ValueError, match='does not split'):
    pipeline.eval_batches(images, 5, 0, 2)
  # process_rows names the rows each host reads, every row once.
  for i, batches in enumerate(hosts):
    read = np.concatenate([padded[mask[2 * i:2 * i + 2]][:, 0, 0, 0]
                           for padded, mask in batches])
    np.testing.assert_array_equal(read, pipeline.process_rows(num, 4, i, 2))
  np.testing.assert_array_equal(np.sort(np.concatenate(
      [pipeline.process_rows(num, 4, i, 2) for i in range(2)])),
                                np.arange(num))


def test_prefetch_to_device_keeps_order_and_items():
  out = list(pipeline.prefetch_to_device(iter(range(5)), lambda x: x * 10, 2))
  assert out == [0, 10, 20, 30, 40]


# -- instance-only examples (STL-10's unlabelled split) -------------------


def test_instance_only_rows_leave_the_clustering_terms_unchanged():
  """Terms over a batch with masked rows equal the terms over the kept rows."""
  config = tiny_config()
  rng = np.random.default_rng(0)
  b, k = 12, 10
  keep = np.array([True, False] * 6)

  def outputs(rows):
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(2 * rows, k))))
    q = jax.nn.softmax(jnp.asarray(rng.normal(size=(2 * rows, k))))
    return probs, q

  probs, q = outputs(b)
  target = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, k))))
  fake = models.ModelOutputs(
      embedding=None,  # projections are unit vectors, as the model's are
      projection=losses.l2_normalize(jnp.asarray(rng.normal(size=(2 * b, 4)))),
      cluster_probs=probs, student_t=q,
      reconstruction=jnp.zeros((2 * b, 1)))
  views = jnp.zeros((2 * b, 1))
  masked = objective.compute_loss_terms(fake, views, target, config.loss,
                                    jnp.asarray(keep))
  rows = np.concatenate([np.flatnonzero(keep), b + np.flatnonzero(keep)])
  kept = objective.compute_loss_terms(
      jax.tree.map(lambda x: x[rows], fake),
      views[rows], target[keep], config.loss)
  for name in ('cluster', 'entropy', 'kl'):
    np.testing.assert_allclose(masked[name], kept[name], rtol=1e-5,
                               err_msg=name)
  # The instance term still sees every row.
  np.testing.assert_allclose(
      masked['instance'], losses.instance_contrastive_loss(
          fake.projection[:b], fake.projection[b:],
          config.loss.instance_temperature), rtol=1e-6)


@pytest.mark.slow
def test_stl10_like_run_clusters_and_evaluates_the_labelled_part(
    tmp_path, tfds):
  config = tiny_config()
  config.dataset = _dataset_config('stl10', 8)
  config.model.backbone = 'convnet'
  config.train.batch_size = 64
  with tfds.testing.mock_data(num_examples=80):
    results = workflows.train_and_evaluate(config, str(tmp_path)).results
  assert results['num_examples'] == 80  # the unlabelled 80 are not evaluated
  assert 0.0 <= results['cluster_head']['acc'] <= 1.0


@pytest.mark.parametrize('name', ['cifar10', 'imagenet10', 'mnist'])
def test_a_tfds_source_without_the_extra_names_the_install(name, monkeypatch):
  # As on a plain install: `import tensorflow` fails.
  for module in ('tensorflow', 'tensorflow_datasets'):
    monkeypatch.setitem(sys.modules, module, None)
  sources_tfds._import_tensorflow.cache_clear()  # pylint: disable=protected-access
  try:
    with pytest.raises(errors.DataError) as error:
      sources.load_dataset(_dataset_config(name))
  finally:
    sources_tfds._import_tensorflow.cache_clear()  # pylint: disable=protected-access
  message = str(error.value)
  assert "pip install 'jcc-clustering[tfds]'" in message
  assert '\n' not in message and repr(name) in message


def test_the_pipelines_and_the_in_memory_sources_never_import_tensorflow(
    tmp_path, tfds):
  # Where TensorFlow is installed (the [tfds] extra) and importable, a fresh
  # process as a run: digits, a folder, an .npz, both pipelines, TensorBoard.
  del tfds
  folder = tmp_path / 'photos'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    _write_jpeg(folder / f'{i}.jpg', rng)
  np.savez(tmp_path / 'a.npz', images=np.zeros((4, 8, 8), np.uint8))
  code = f"""
import sys
from jcc import metric_writer, pipeline, sources
from jcc.configs import digits
config = digits.get_config().dataset
data = sources.load_dataset(config)
for name, path in (('folder', {str(folder)!r}), ('npz', {str(tmp_path / 'a.npz')!r})):
  config.name, config.path = name, path
  sources.load_dataset(config)
list(pipeline.train_batches(data, 64, 0, 0, 3))
list(pipeline.eval_batches(data.images, 512))
writer = metric_writer.MetricWriter({str(tmp_path)!r})
writer.write_scalars(1, {{'loss': 1.0}})
writer.close()
loaded = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]
print('imported:', loaded)
"""
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'imported: []' in proc.stdout


def test_prefetching_thread_passes_on_an_error_and_ends_when_abandoned():
  def failing():
    yield 1
    raise OSError('disk gone')

  got = []
  with pytest.raises(OSError, match='disk gone'):
    for item in pipeline.prefetch_in_thread(failing()):
      got.append(item)
  assert got == [1]

  threads = threading.active_count()
  batches = pipeline.prefetch_in_thread(iter(range(1000)), size=1)
  assert next(batches) == 0
  batches.close()  # a consumer that stops early, as a replaced pipeline
  deadline = time.time() + 10
  while threading.active_count() > threads and time.time() < deadline:
    time.sleep(0.05)
  assert threading.active_count() == threads
