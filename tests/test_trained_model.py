"""The saved model: predict without the training data or the config, from
the command line and from Python (jcc.Clusterer), bit for bit the
evaluation's own assignments."""

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn import datasets
from sklearn.exceptions import NotFittedError

from jcc import Clusterer
from jcc import errors
from jcc import trained_model
from jcc import workflows
from tests.cli import run_main
from tests.conftest import tiny_config

NUM_IMAGES = 300


def _digit_images(count=NUM_IMAGES):
  pixels = np.round(datasets.load_digits().images[:count] * 255 / 16)
  return pixels.astype(np.uint8)


@pytest.fixture(scope='module')
def trained_on_npz(tmp_path_factory):
  """A workdir trained on an .npz that is deleted after the training."""
  root = tmp_path_factory.mktemp('npz_run')
  np.savez(root / 'train.npz', images=_digit_images())
  config = tiny_config(batch_size=64)
  config.dataset.name, config.dataset.path = 'npz', str(root / 'train.npz')
  workflows.train_and_evaluate(config, str(root / 'run'))
  (root / 'train.npz').unlink()
  return root / 'run'


def _report_clusters(workdir):
  with open(workdir / 'report' / 'assignments.csv') as f:
    rows = list(csv.DictReader(f))
  return np.array([int(r['cluster']) for r in rows])


def test_the_command_line_predicts_with_no_config_from_anywhere(
    trained_on_npz, tmp_path, monkeypatch):
  new = _digit_images()[::7]
  np.savez(tmp_path / 'new.npz', images=new)
  monkeypatch.chdir(tmp_path)  # not the checkout: nothing found by cwd
  finished = run_main('--mode=predict', f'--workdir={trained_on_npz}',
                      '--config.predict.input=new.npz')
  assert finished.status == 0, finished.stderr[-2000:]
  assert 'predictions.csv' in finished.stdout
  with open(trained_on_npz / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  embeddings = np.load(trained_on_npz / 'embeddings.npy')
  assert len(rows) == len(embeddings) == len(new)
  model = Clusterer.load(str(trained_on_npz))
  np.testing.assert_array_equal([int(r['cluster']) for r in rows],
                                model.predict(new))
  # Row i of the embeddings is row i of the CSV (the npz's order).
  np.testing.assert_array_equal(embeddings, model.transform(new))


def test_a_saved_model_predicts_the_evaluations_own_assignments(
    trained_on_npz, tmp_path):
  images = _digit_images()
  model = Clusterer.load(str(trained_on_npz))
  np.testing.assert_array_equal(model.predict(images),
                                _report_clusters(trained_on_npz))
  np.testing.assert_array_equal(
      model.transform(images),
      np.load(trained_on_npz / 'report' / 'embeddings.npy'))
  copy = Clusterer.load(model.save(str(tmp_path / 'kept')))
  np.testing.assert_array_equal(copy.predict(images),
                                _report_clusters(trained_on_npz))
  proba = copy.predict_proba(images)
  assert proba.shape == (NUM_IMAGES, 10)
  np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(proba.argmax(axis=1), copy.predict(images))
  embedding = copy.transform(images)
  assert embedding.ndim == 2 and len(embedding) == NUM_IMAGES
  assert copy.cluster_centers_.shape == (10, embedding.shape[1])
  assert copy.n_clusters == 10


def test_the_saved_model_holds_what_prediction_needs(trained_on_npz):
  info = json.loads((trained_on_npz / 'saved_model' / 'info.json')
                    .read_text())
  assert (info['num_clusters'], info['image_size'], info['channels']) == (
      10, 8, 1)
  assert info['config']['model']['convnet_widths'] == [8, 16]
  model = trained_model.load(str(trained_on_npz))
  assert model.step == info['step'] > 0
  assert set(model.variables) == {'params', 'batch_stats'}


def test_images_of_other_sizes_and_channel_counts(trained_on_npz):
  model = Clusterer.load(str(trained_on_npz))
  gray = _digit_images()[:20]
  expected = model.predict(gray)
  # Grey as RGB is the same grey again; a channel axis changes nothing.
  np.testing.assert_array_equal(model.predict(np.repeat(gray[..., None], 3,
                                                        axis=-1)), expected)
  np.testing.assert_array_equal(model.predict(gray[..., None]), expected)
  # A larger image is resized to the model's 8×8 as in training.
  large = np.repeat(np.repeat(gray, 4, axis=1), 4, axis=2)
  assert model.predict(large).shape == (20,)
  assert model.transform(large).shape == model.transform(gray).shape


def test_mistakes_are_one_line_naming_the_fix(trained_on_npz):
  def message(raised):
    text = str(raised.value)
    assert '\n' not in text
    return text

  with pytest.raises(NotFittedError) as raised:
    Clusterer().predict(_digit_images()[:3])
  assert 'fit' in message(raised)
  model = Clusterer.load(str(trained_on_npz))
  for bad in (np.zeros(5, np.uint8), np.zeros((2, 3, 8, 8, 1), np.uint8)):
    with pytest.raises(errors.DataError) as raised:
      model.predict(bad)
    assert '(N, H, W)' in message(raised)
  with pytest.raises(errors.ConfigError) as raised:
    Clusterer(n_clusters=1).fit(_digit_images())
  assert 'at least 2' in message(raised)
  with pytest.raises(errors.ConfigError) as raised:
    Clusterer(train__num_epoch=3).fit(_digit_images())
  assert 'train__num_epochs' in message(raised)
  with pytest.raises(errors.ConfigError) as raised:
    Clusterer(config='no_such_config').fit(_digit_images())
  assert 'digits' in message(raised)


def test_parameters_follow_scikit_learns_protocol():
  model = Clusterer(n_clusters=4, train__num_epochs=3)
  assert model.get_params() == {'n_clusters': 4, 'config': 'digits',
                                'workdir': None, 'train__num_epochs': 3}
  model.set_params(n_clusters=6, dataset__image_size=12)
  config = model.training_config()
  assert (config.dataset.num_clusters, config.dataset.image_size,
          config.train.num_epochs) == (6, 12, 3)
  assert repr(model) == ('Clusterer(dataset__image_size=12, n_clusters=6, '
                         'train__num_epochs=3)')
  # scikit-learn's clone rebuilds an estimator from its parameters.
  again = Clusterer(**model.get_params())
  assert again.get_params() == model.get_params()


def test_fit_trains_on_an_array_and_sets_the_fitted_attributes(tmp_path):
  images = _digit_images()
  config = tiny_config(batch_size=64)
  model = Clusterer(n_clusters=5, config=config, workdir=str(tmp_path / 'w'))
  assert model.fit(images) is model
  assert model.labels_.shape == (NUM_IMAGES,)
  assert set(model.labels_) <= set(range(5))
  assert model.cluster_centers_.shape[0] == 5
  assert model.results_['num_clusters'] == 5
  # With a workdir, the command line's files are there, and a second fit
  # resumes (here: the training is complete, so it only evaluates).
  assert (tmp_path / 'w' / 'saved_model' / 'info.json').is_file()
  np.testing.assert_array_equal(model.fit_predict(images), model.labels_)


def test_a_workdir_without_a_saved_model(trained_copy, tmp_path):
  # A workdir with checkpoints only: with its config, the model is
  # restored from the last checkpoint and saved; without, the error says
  # how to save it.
  shutil.rmtree(trained_copy / 'saved_model')
  np.savez(tmp_path / 'new.npz', images=_digit_images()[:10])
  finished = run_main('--mode=predict', f'--workdir={trained_copy}',
                      f'--config.predict.input={tmp_path}/new.npz')
  assert finished.status == 2
  assert '--mode=evaluate' in finished.last_line
  assert '--config' in finished.last_line
  config = tiny_config(checkpoint_every_steps=7)
  config.predict.input = str(tmp_path / 'new.npz')
  assert workflows.predict_workdir(config, str(trained_copy)).sum() == 10
  assert (trained_copy / 'saved_model' / 'info.json').is_file()


def test_a_config_for_another_model_is_refused(trained_on_npz, tmp_path):
  np.savez(tmp_path / 'new.npz', images=_digit_images()[:10])
  finished = run_main('--mode=predict', '--config=digits',
                      f'--workdir={trained_on_npz}',
                      f'--config.predict.input={tmp_path}/new.npz')
  assert finished.status == 2
  assert finished.last_line.startswith(
      'jcc: error: --config describes another model')
  assert 'model.convnet_widths' in finished.last_line
  assert 'Leave out --config' in finished.last_line


def test_train_without_a_config_names_one():
  finished = run_main('--workdir=/tmp/unused')
  assert finished.status == 2
  assert finished.last_line == (
      'jcc: error: --config is missing: name a config (--config=digits, or '
      'a file such as configs/digits.py; jcc/configs/ holds them all).')


@pytest.mark.slow
def test_fit_with_a_named_config_on_real_mnist(shared_data):
  # The issue's own example: a packaged config by name, nested parameters,
  # 28×28 uint8 images resized to the config's 16×16, no workdir.
  images = np.load(shared_data / 'mnist_test.npz')['images'][:1000]
  model = Clusterer(n_clusters=5, config='mnist', train__num_epochs=2,
                    train__warmup_epochs=1, train__min_steps=0).fit(images)
  assert model.labels_.shape == (1000,)
  assert model.cluster_centers_.shape[0] == 5
  np.testing.assert_array_equal(model.predict(images), model.labels_)
  # Best by silhouette among 2 … 2K.
  sweep = model.results_['k_sweep']
  assert set(sweep['silhouette']) == {str(k) for k in range(2, 11)}
  assert sweep['best_k'] == int(max(sweep['silhouette'],
                                    key=sweep['silhouette'].get))


def test_a_packaged_config_is_named_on_the_command_line(tmp_path):
  # The name (with its :argument) reaches the packaged file: the override
  # below is then checked against mnist's config.
  finished = run_main('--config=mnist:paper', f'--workdir={tmp_path}/w',
                      '--config.train.num_epochs=0')
  assert finished.status == 2
  assert finished.last_line == (
      'jcc: error: config.train.num_epochs=0: must be an integer >= 1.')
  finished = run_main('--config=mnistt', f'--workdir={tmp_path}/w')
  assert finished.status == 2
  assert finished.last_line.startswith(
      'jcc: error: --config=mnistt: neither a file nor a config name (')
  assert 'cifar10_small' in finished.last_line


def test_the_saved_model_keeps_no_path_of_the_training_data(trained_on_npz):
  # trained_on_npz trained on ROOT/train.npz: the model keeps its name only.
  text = (trained_on_npz / 'saved_model' / 'info.json').read_text()
  assert str(trained_on_npz.parent) not in text
  assert json.loads(text)['config']['dataset']['path'] == 'train.npz'


@pytest.mark.parametrize('edit,match', [
    (lambda info: info['config']['model'].update(backbone='vgg'),
     r"info.json: model.backbone='vgg' must be one of"),
    (lambda info: info['config']['train'].update(compute_dtype='float16'),
     r'info.json: train.compute_dtype=.float16. must be one of'),
    (lambda info: info.update(num_clusters=12),
     r'info.json: num_clusters=12, but its config says 10'),
    (lambda info: info.update(channels=4), r'channels=4 must be 1 or 3'),
    (lambda info: info['config']['dataset'].update(num_clusters=12) or
     info.update(num_clusters=12),
     r'variables.msgpack does not hold the model that info.json describes '
     r'\(params/cluster_head/Dense_1/bias: \(10,\) there, \(12,\)'),
    (lambda info: info['config']['model'].update(convnet_widths=[8, 16, 32]),
     'the two files come from different models'),
])
def test_a_saved_model_that_does_not_add_up_is_one_line(
    trained_on_npz, tmp_path, edit, match):
  folder = tmp_path / 'model'
  shutil.copytree(trained_on_npz / 'saved_model', folder)
  info = json.loads((folder / 'info.json').read_text())
  edit(info)
  (folder / 'info.json').write_text(json.dumps(info))
  with pytest.raises(errors.CheckpointError, match=match) as raised:
    trained_model.load(str(folder))
  assert '\n' not in str(raised.value)


def test_predictions_are_written_as_one_unit_and_elsewhere_on_request(
    trained_on_npz, tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from unittest import mock  # pylint: disable=g-import-not-at-top
  from jcc import sources  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  shutil.copytree(trained_on_npz / 'saved_model', workdir / 'saved_model')
  np.savez(tmp_path / 'new.npz', images=_digit_images()[:10])
  config = tiny_config()
  config.predict.input = str(tmp_path / 'new.npz')
  workflows.predict_workdir(config, str(workdir))
  before = [(workdir / n).read_bytes()
            for n in ('predictions.csv', 'embeddings.npy')]
  # A full disk while the pair is written: the earlier pair stays whole.
  config.predict.input = str(trained_on_npz.parent / 'other.npz')
  np.savez(config.predict.input, images=_digit_images()[10:15])
  full = OSError(errno.ENOSPC, 'No space left on device')
  with mock.patch.object(np.lib.format, 'write_array_header_1_0',
                         side_effect=full):
    with pytest.raises(errors.CheckpointError, match='No space left'):
      workflows.predict_workdir(config, str(workdir))
  assert before == [(workdir / n).read_bytes()
                    for n in ('predictions.csv', 'embeddings.npy')]
  # The targets are checked before any image is read.
  (workdir / 'embeddings.npy').unlink()
  (workdir / 'embeddings.npy').mkdir()
  with mock.patch.object(sources, 'load_predict_images',
                         side_effect=AssertionError('read first')):
    with pytest.raises(errors.UserError, match='is a directory'):
      workflows.predict_workdir(config, str(workdir))
  # A read-only model folder: one line, and predict.output writes elsewhere.
  os.chmod(workdir, 0o555)
  monkeypatch.setattr(os, 'access', lambda path, mode: mode != os.W_OK or (
      str(path) != str(workdir)))  # root ignores the permission bits
  try:
    with pytest.raises(errors.ConfigError, match='read-only.*predict.output'):
      workflows.predict_workdir(config, str(workdir))
    config.predict.output = str(tmp_path)
    sizes = workflows.predict_workdir(config, str(workdir))
  finally:
    os.chmod(workdir, 0o755)
  assert sizes.sum() == 5 and (tmp_path / 'predictions.csv').is_file()
  assert len(np.load(tmp_path / 'embeddings.npy')) == 5
