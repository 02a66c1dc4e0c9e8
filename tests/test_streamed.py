"""Streamed data: image files and converted sets read from disk by rows."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jcc import configs
from jcc import convert
from jcc import pipeline
from jcc import sources
from jcc import workflows
from jcc.errors import CheckpointError, DataError
from jcc.sources import streamed
from tests.conftest import REPO_ROOT, tiny_config, write_idx


@pytest.fixture(scope='module')
def digit_folder(tmp_path_factory):
  """600 of the bundled digits as 8×8 PNG files, one folder per class."""
  root = tmp_path_factory.mktemp('digits')
  ds = sources.load_digits(None)
  for i in range(600):
    folder = root / str(ds.labels[i])
    folder.mkdir(exist_ok=True)
    Image.fromarray(ds.images[i, :, :, 0]).save(folder / f'{i:04d}.png')
  return root


def _folder_config(path, **dataset):
  config = tiny_config(batch_size=100)
  config.dataset.name, config.dataset.path = 'folder', str(path)
  config.dataset.update(dataset)
  return config


def test_streamed_rows_are_the_in_memory_images(digit_folder):
  in_memory = sources.load_dataset(_folder_config(digit_folder).dataset)
  stream = sources.load_dataset(
      _folder_config(digit_folder, stream=True).dataset)
  assert isinstance(stream.images, streamed.FileImages)
  assert stream.images.shape == in_memory.images.shape
  np.testing.assert_array_equal(stream.labels, in_memory.labels)
  assert stream.image_names == in_memory.image_names
  rows = np.array([5, 3, 3, 599, 0])  # unsorted, repeated
  np.testing.assert_array_equal(stream.images[rows], in_memory.images[rows])
  np.testing.assert_array_equal(stream.images[10:20],
                                in_memory.images[10:20])
  np.testing.assert_array_equal(stream.images[-1], in_memory.images[-1])
  with pytest.raises(IndexError):
    stream.images[600]  # pylint: disable=pointless-statement
  a = next(pipeline.host_batches(in_memory, 100, 0, 3, 4))
  b = next(pipeline.host_batches(stream, 100, 0, 3, 4))
  np.testing.assert_array_equal(a['images'], b['images'])


def test_a_converted_set_reads_back_the_same_images(digit_folder, tmp_path):
  out = tmp_path / 'stored'
  convert.convert(str(digit_folder), str(out), 8, show_progress=False)
  in_memory = sources.load_dataset(_folder_config(digit_folder).dataset)
  stored = np.load(out / 'images.npy')  # NumPy's own format
  np.testing.assert_array_equal(stored, in_memory.images)
  np.testing.assert_array_equal(np.load(out / 'labels.npy'),
                                in_memory.labels)
  info = json.loads((out / 'info.json').read_text())
  assert info['count'] == 600 and info['class_names'] == list('0123456789')
  config = _folder_config(out, name='converted', stream=True).dataset
  rows = sources.load_dataset(config)
  assert isinstance(rows.images, streamed.StoredImages)
  index = np.array([599, 1, 2, 3, 40, 2])
  np.testing.assert_array_equal(rows.images[index], stored[index])
  config.stream = False  # fits: read into memory in one read
  whole = sources.load_dataset(config)
  assert isinstance(whole.images, np.ndarray)
  np.testing.assert_array_equal(whole.images, stored)
  # Streamed or not, the same content digest: a run may switch.
  assert rows.content_digest() == whole.content_digest()
  assert whole.image_names == in_memory.image_names
  # Read at another size, resized as read.
  config.image_size, config.stream = 16, True
  assert sources.load_dataset(config).images[:3].shape == (3, 16, 16, 1)


def test_a_run_streamed_trains_as_one_in_memory(digit_folder, tmp_path):
  results = [workflows.train_and_evaluate(
      _folder_config(digit_folder, stream=stream),
      str(tmp_path / str(stream))).results for stream in (False, True)]
  for name in ('cluster_head', 'kmeans'):
    assert results[0][name] == results[1][name]


def test_a_large_folder_is_streamed_with_a_warning(digit_folder, monkeypatch,
                                                   caplog):
  monkeypatch.setattr(streamed, 'memory_budget', lambda: 1000)
  ds = sources.load_dataset(_folder_config(digit_folder).dataset)
  assert isinstance(ds.images, streamed.FileImages)
  assert 'over the in-memory budget' in caplog.text
  assert 'dataset.stream=True' in caplog.text


def test_a_large_folder_with_streaming_off_stops_naming_the_field(
    digit_folder, monkeypatch):
  monkeypatch.setattr(streamed, 'memory_budget', lambda: 1000)
  with pytest.raises(DataError, match='over the in-memory budget.*'
                     'stream them from disk with --config.dataset.stream=True'
                     ) as error:
    sources.load_dataset(_folder_config(digit_folder, stream=False).dataset)
  assert '\n' not in str(error.value)


def test_streaming_a_source_read_into_memory_is_one_line(tmp_path):
  config = tiny_config().dataset
  config.stream = True
  with pytest.raises(DataError, match="dataset 'digits' is read into "
                     'memory.*python -m jcc.convert'):
    sources.load_dataset(config)


def test_bad_files_are_skipped_when_listed_and_grey_when_read(tmp_path,
                                                              caplog):
  for i in range(4):
    Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(
        tmp_path / f'{i}.png')
  (tmp_path / 'junk.png').write_bytes(b'not an image')
  config = _folder_config(tmp_path, stream=True).dataset
  ds = sources.load_dataset(config)
  assert len(ds) == 4 and 'junk.png' in caplog.text
  data = (tmp_path / '2.png').read_bytes()
  (tmp_path / '2.png').write_bytes(data[:len(data) // 2])  # truncated since
  caplog.clear()
  rows = ds.images[:]
  assert (rows[2] == 128).all() and rows[1].max() == 40
  assert '2.png' in caplog.text and 'grey' in caplog.text
  config.skip_bad_images = False
  with pytest.raises(DataError, match='junk.png'):
    sources.load_dataset(config)


def test_a_workdir_says_which_stream_setting_it_was_trained_with(
    digit_folder, tmp_path):
  workdir = str(tmp_path / 'run')
  config = _folder_config(digit_folder, stream=True)
  config.train.num_epochs = 1
  workflows.train_and_evaluate(config, workdir)
  config.dataset.stream = False
  with pytest.raises(CheckpointError,
                     match='resume with --config.dataset.stream=True'):
    workflows.train_and_evaluate(config, workdir)


def _convert_command(*flags):
  return subprocess.run([sys.executable, '-m', 'jcc.convert', *flags],
                        cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_the_convert_command(digit_folder, tmp_path):
  out = tmp_path / 'stored'
  done = _convert_command(f'--input={digit_folder}', f'--output={out}',
                          '--image_size=8')
  assert done.returncode == 0, done.stderr
  assert 'converted 600/600 images' in done.stderr
  assert 'dataset.name=converted' in done.stdout
  assert sorted(os.listdir(out)) == ['images.npy', 'info.json', 'labels.npy']
  for flags, message in (
      ((f'--input={digit_folder}', f'--output={out}', '--image_size=8'),
       'is not empty'),
      ((f'--input={digit_folder}', f'--output={digit_folder}/x',
        '--image_size=8'), 'inside --input'),
      ((f'--input={tmp_path}/none', f'--output={tmp_path}/o',
        '--image_size=8'), 'not a folder of images'),
      ((f'--input={digit_folder}',), '--output and --image_size missing'),
      ((f'--input={digit_folder}', f'--output={tmp_path}/o',
        '--image_size=4'), 'from 8 to 512')):
    done = _convert_command(*flags)
    assert done.returncode == 2, (flags, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (flags, done.stderr)


def test_a_short_stored_file_is_one_line(digit_folder, tmp_path):
  out = tmp_path / 'stored'
  convert.convert(str(digit_folder), str(out), 8, show_progress=False)
  path = out / 'images.npy'
  path.write_bytes(path.read_bytes()[:-64])
  with pytest.raises(DataError, match='short of the'):
    sources.load_dataset(_folder_config(out, name='converted').dataset)
  with pytest.raises(DataError, match='python -m jcc.convert'):
    sources.load_dataset(_folder_config(tmp_path, name='converted').dataset)


def test_predict_streams_a_folder_too_large_to_hold(digit_folder, monkeypatch,
                                                    trained_workdir, tmp_path,
                                                    caplog):
  config = configs.load(str(REPO_ROOT / 'jcc' / 'prediction_config.py'))
  config.predict.input = str(digit_folder)
  config.predict.output = str(tmp_path / 'held')
  (tmp_path / 'held').mkdir()
  (tmp_path / 'streamed').mkdir()
  workflows.predict_workdir(config, str(trained_workdir))
  held = (tmp_path / 'held' / 'predictions.csv').read_bytes()
  monkeypatch.setattr(streamed, 'memory_budget', lambda: 1000)
  config.predict.output = str(tmp_path / 'streamed')
  workflows.predict_workdir(config, str(trained_workdir))
  assert 'over the in-memory budget' in caplog.text
  assert (tmp_path / 'streamed' / 'predictions.csv').read_bytes() == held
  np.testing.assert_array_equal(
      np.load(tmp_path / 'held' / 'embeddings.npy'),
      np.load(tmp_path / 'streamed' / 'embeddings.npy'))
  # A converted set predicts as its folder, with the files' names.
  convert.convert(str(digit_folder), str(tmp_path / 'stored'), 8,
                  show_progress=False)
  config.predict.input = str(tmp_path / 'stored')
  config.predict.output = str(tmp_path / 'streamed')
  workflows.predict_workdir(config, str(trained_workdir))
  assert (tmp_path / 'streamed' / 'predictions.csv').read_bytes() == held


def test_a_folder_of_idx_files_converts_in_chunks(tmp_path, monkeypatch):
  rng, idx = np.random.default_rng(0), tmp_path / 'idx'
  idx.mkdir()
  train = rng.integers(0, 256, (700, 6, 5), dtype=np.uint8)
  test = rng.integers(0, 256, (300, 6, 5), dtype=np.uint8)
  write_idx(idx / 'train-images-idx3-ubyte', train)  # one uncompressed
  write_idx(idx / 'train-labels-idx1-ubyte.gz', np.arange(700) % 10)
  write_idx(idx / 't10k-images-idx3-ubyte.gz', test)
  write_idx(idx / 't10k-labels-idx1-ubyte.gz', np.arange(300) % 7)
  monkeypatch.setattr(convert, 'CHUNK', 256)
  convert.convert(str(idx), str(tmp_path / 'out'), 6,
                  show_progress=False)
  stored = np.load(tmp_path / 'out' / 'images.npy')
  np.testing.assert_array_equal(  # 6×5 resized to 6×6, as in memory
      stored, sources.resize_images(
          np.concatenate([train, test])[..., None], 6))
  np.testing.assert_array_equal(
      np.load(tmp_path / 'out' / 'labels.npy'),
      np.concatenate([np.arange(700) % 10, np.arange(300) % 7]))
  with open(idx / 'train-images-idx3-ubyte', 'r+b') as f:
    f.truncate(4 + 12 + 30 * 699)  # the last image cut short
  with pytest.raises(DataError, match='truncated'):
    convert.convert(str(idx), str(tmp_path / 'again'), 6,
                    show_progress=False)


def test_an_npz_converts_in_chunks_and_one_too_large_says_so(tmp_path,
                                                             monkeypatch):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (1100, 12, 12, 4), dtype=np.uint8)  # RGBA
  labels = rng.integers(0, 3, 1100)
  np.savez(tmp_path / 'x.npz', images=images, labels=labels)
  monkeypatch.setattr(convert, 'CHUNK', 256)
  convert.convert(str(tmp_path / 'x.npz'), str(tmp_path / 'out'), 12,
                  show_progress=False)
  np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'images.npy'),
                                images[..., :3])  # alpha dropped, as loaded
  np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'labels.npy'),
                                labels)
  monkeypatch.setattr(streamed, 'memory_budget', lambda: 1000)
  with pytest.raises(DataError, match='python -m jcc.convert --input='):
    sources.load_dataset(_folder_config(tmp_path / 'x.npz',
                                        name='npz').dataset)
