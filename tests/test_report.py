"""Reports, metric logs and predict, on real digits written as image files."""

import csv
import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from jcc import errors
from jcc import report
from jcc import workflows
from tests.conftest import tiny_config

NUM_IMAGES = 300


@pytest.fixture(scope='module')
def digits_folder(tmp_path_factory):
  """The first 300 of scikit-learn's digits as PNGs in DIR/<digit>/."""
  root = tmp_path_factory.mktemp('digits_png')
  digits = datasets.load_digits()
  for i in range(NUM_IMAGES):
    folder = root / f'digit{digits.target[i]}'
    folder.mkdir(exist_ok=True)
    pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels, 'L').save(folder / f'{i:04d}.png')
  return root


def _folder_config(root):
  config = tiny_config(batch_size=64, num_epochs=4, warmup_epochs=2,
                       eval_every_steps=4)
  config.dataset.name = 'folder'
  config.dataset.path = str(root)
  return config


@pytest.fixture(scope='module')
def trained(digits_folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = _folder_config(digits_folder)
  results = workflows.train_and_evaluate(config, str(workdir)).results
  return config, workdir, results


def test_matched_confusion_orders_clusters_by_their_class():
  labels = np.array([0, 0, 1, 1, 2, 2])
  assigned = np.array([2, 2, 0, 0, 1, 3])  # cluster 3 matches nothing
  counts, order = report.matched_confusion(labels, assigned, 4)
  np.testing.assert_array_equal(order, [2, 0, 1, 3])
  np.testing.assert_array_equal(counts, [[2, 0, 0, 0], [0, 2, 0, 0],
                                         [0, 0, 1, 1]])


def test_report_files_are_valid_pngs_and_tables(trained):
  config, workdir, results = trained
  k = config.dataset.num_clusters
  out = workdir / 'report'
  with Image.open(out / 'clusters.png') as grid:
    grid.verify()
  with Image.open(out / 'clusters.png') as grid:
    # One row of 0.8 inch per cluster at 80 dpi, plus the title's margin.
    assert grid.format == 'PNG'
    assert grid.size == (int((report.GRID_IMAGES * 0.8 + 1.2) * 80),
                         int((k * 0.8 + 0.6) * 80))
  with Image.open(out / 'confusion.png') as confusion:
    assert confusion.format == 'PNG' and min(confusion.size) >= 300
  assert 'cluster_head' in (out / 'metrics.txt').read_text()
  with open(out / 'cluster_sizes.csv') as f:
    sizes = list(csv.DictReader(f))
  assert len(sizes) == k
  assert sum(int(r['images_cluster_head']) for r in sizes) == NUM_IMAGES
  assert sum(int(r['images_dec']) for r in sizes) == NUM_IMAGES


def test_tensorboard_and_jsonl_hold_the_loss_terms(trained):
  _, workdir, results = trained
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(
      str(workdir / 'tensorboard'), size_guidance={'tensors': 0})
  events.Reload()
  tags = set(events.Tags()['tensors'])
  for name in ('loss/instance', 'loss/cluster', 'loss/entropy',
               'loss/reconstruction', 'loss/kl', 'loss/total',
               'learning_rate', 'images_per_second',
               'eval/cluster_head_acc', 'eval/dec_acc'):
    assert name in tags, name
  steps = [e.step for e in events.Tensors('loss/instance')]
  assert steps == sorted(steps) and len(steps) >= 4
  lines = [json.loads(l) for l in
           (workdir / 'metrics.jsonl').read_text().splitlines()]
  final = [l for l in lines if 'eval/kmeans_acc' in l]
  assert final and final[-1]['eval/cluster_head_acc'] == pytest.approx(
      results['cluster_head']['acc'])
  assert any('eval/cluster_head_acc' in l and l['step'] == 4 for l in lines)


def test_predict_on_a_folder_matches_evaluate(trained, digits_folder):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.predict.input = str(digits_folder)
  sizes = workflows.predict_workdir(config, str(workdir))
  written = _predictions(workdir)
  assert len(written) == NUM_IMAGES
  names = [r['image'] for r in written]
  assert names == sorted(names)  # class folders, then files, sorted
  np.testing.assert_array_equal(sizes, np.bincount(
      [int(r['cluster']) for r in written],
      minlength=config.dataset.num_clusters))
  with open(workdir / 'report' / 'assignments.csv') as f:
    evaluated = list(csv.DictReader(f))
  # The training report names each image's file, as predictions.csv does.
  assert [r['image'] for r in evaluated] == names
  # The folder source lists the same files in the same order.
  assert [int(r['cluster']) for r in written] == [
      int(r['cluster']) for r in evaluated]
  assert [int(r['dec_cluster']) for r in written] == [
      int(r['dec_cluster']) for r in evaluated]
  confidence = np.array([float(r['confidence']) for r in written])
  assert (confidence >= 1 / config.dataset.num_clusters - 1e-4).all()
  # Stable: a second prediction gives the same rows.
  workflows.predict_workdir(config, str(workdir))
  assert _predictions(workdir) == written


def _predictions(folder) -> list[dict]:
  with open(folder / 'predictions.csv', newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def test_predict_on_an_npz_and_its_errors(trained, tmp_path):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  rgb = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3), np.uint8)
  np.savez(tmp_path / 'new.npz', images=rgb)  # other size and channels
  config.predict.input = str(tmp_path / 'new.npz')
  workflows.predict_workdir(config, str(workdir))
  assert [r['image'] for r in _predictions(workdir)] == [
      str(i) for i in range(7)]
  config.predict.input = ''
  with pytest.raises(errors.ConfigError, match='predict.input'):
    workflows.predict_workdir(config, str(workdir))
  config.predict.input = str(tmp_path / 'absent')
  with pytest.raises(errors.DataError, match='absent'):
    workflows.predict_workdir(config, str(workdir))
  with pytest.raises(errors.CheckpointError):
    config.predict.input = str(tmp_path / 'new.npz')
    workflows.predict_workdir(config, str(tmp_path / 'untrained'))


def test_predict_writes_every_row_for_odd_file_names(trained, tmp_path):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  folder = tmp_path / 'new'
  folder.mkdir()
  pixels = np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)
  names = [b'bad\xffbyte.png', b'=1+2.png', b'plain.png', 'café.png'.encode()]
  for name in names:
    Image.fromarray(pixels, 'L').save(os.path.join(os.fsencode(folder), name))
  config.predict.input = str(folder)
  assert workflows.predict_workdir(config, str(workdir)).sum() == len(names)
  with open(workdir / 'predictions.csv', newline='', encoding='utf-8') as f:
    written = sorted(r['image'] for r in csv.DictReader(f))
  assert written == sorted(["'=1+2.png", 'bad\\xffbyte.png', 'café.png',
                            'plain.png'])


def test_predictions_are_written_batch_by_batch_as_one_unit(tmp_path):
  rng = np.random.default_rng(0)
  n, k = 10, 3
  probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
  outputs = {'embedding': rng.normal(size=(n, 4)).astype(np.float32),
             'cluster_probs': probs, 'student_t': probs[:, ::-1]}
  names = [f'{i}.png' for i in range(n)]

  def batches(size, fail_at=None):
    for i, start in enumerate(range(0, n, size)):
      if i == fail_at:
        raise OSError(28, 'No space left on device')
      yield {key: value[start:start + size] for key, value in outputs.items()}

  sizes = report.write_predictions(str(tmp_path), names, batches(4), k)
  np.testing.assert_array_equal(sizes, np.bincount(probs.argmax(1),
                                                   minlength=k))
  np.testing.assert_array_equal(np.load(tmp_path / 'embeddings.npy'),
                                outputs['embedding'])
  # The rows the whole set's assignments give, in one file.
  report.write_assignments(str(tmp_path / 'whole.csv'), report.assignment_rows(
      {'image': names}, **report.head_assignments(outputs)))
  before = [(tmp_path / name).read_bytes() for name in report.PREDICTIONS]
  assert before[0] == (tmp_path / 'whole.csv').read_bytes()
  # Stopped after two batches: the earlier pair stays whole, nothing is
  # left beside it.
  with pytest.raises(OSError):
    report.write_predictions(str(tmp_path), names, batches(4, fail_at=2), k)
  with pytest.raises(ValueError, match='8 predictions for 10 images'):
    report.write_predictions(str(tmp_path), names,
                             itertools.islice(batches(8), 1), k)
  assert before == [(tmp_path / name).read_bytes()
                    for name in report.PREDICTIONS]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      report.PREDICTIONS + ('whole.csv',))


def test_embeddings_written_in_parts_are_the_whole_table(tmp_path):
  # Each process writes its own rows (runs of rows of each eval batch, in
  # any order) into one file; until it is finished the previous file stays.
  (tmp_path / 'report').mkdir()
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(23, 5)).astype(np.float32)
  np.save(tmp_path / 'report' / 'embeddings.npy', np.zeros((2, 2)))
  report.create_embeddings(str(tmp_path), 23, 5)
  rows = np.arange(23)
  mine = (rows // 4) % 2 == 0  # two processes, batches of 8
  for share in (rows[~mine][::-1], rows[mine], np.array([], int)):
    report.write_embedding_rows(str(tmp_path), embeddings[share], share)
    assert np.load(tmp_path / 'report' / 'embeddings.npy').shape == (2, 2)
  path = report.finish_embeddings(str(tmp_path))
  np.testing.assert_array_equal(np.load(path), embeddings)
  assert os.listdir(tmp_path / 'report') == ['embeddings.npy']
