"""jcc.Clusterer as a scikit-learn estimator: one entrance with the command
line, no side effects on the caller's process, and scikit-learn's contract
(check_estimator, clone, pickling) on images."""

import os
import pickle
from unittest import mock

import jax
import joblib
import numpy as np
import pytest
from sklearn import base
from sklearn import datasets
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import check_estimator

from jcc import Clusterer
from jcc import configs
from jcc import errors
from tests.cli import run_main
from tests.conftest import tiny_config

IMAGES = np.round(datasets.load_digits().images[:300] * 255 / 16).astype(
    np.uint8)

# scikit-learn's checks that cannot apply to an image clusterer, and why.
# Each fits 2-D float feature matrices (N, F); Clusterer clusters uint8
# images (N, H, W[, C]) and refuses anything else in one line. The
# properties they check are checked on images below.
_FEATURE_MATRICES = (
    'scikit-learn fits 2-D float feature matrices; Clusterer takes uint8 '
    'images (N, H, W[, C]) and refuses other input in one line')
EXPECTED_FAILED_CHECKS = {
    name: _FEATURE_MATRICES for name in (
        'check_clustering', 'check_complex_data', 'check_dict_unchanged',
        'check_dont_overwrite_parameters', 'check_dtype_object',
        'check_estimator_sparse_array', 'check_estimator_sparse_matrix',
        'check_estimator_sparse_tag', 'check_estimators_dtypes',
        'check_estimators_empty_data_messages',
        'check_estimators_fit_returns_self', 'check_estimators_nan_inf',
        'check_estimators_overwrite_params', 'check_estimators_pickle',
        'check_f_contiguous_array_estimator', 'check_fit2d_1feature',
        'check_fit2d_1sample', 'check_fit2d_predict1d',
        'check_fit_check_is_fitted', 'check_fit_idempotent',
        'check_fit_score_takes_y', 'check_methods_sample_order_invariance',
        'check_methods_subset_invariance', 'check_n_features_in',
        'check_n_features_in_after_fitting', 'check_pipeline_consistency',
        'check_positive_only_tag_during_fit', 'check_readonly_memmap_input',
        'check_transformer_data_not_an_array', 'check_transformer_general')}
EXPECTED_FAILED_CHECKS['check_do_not_raise_errors_in_init_or_set_params'] = (
    "it passes the **params catch-all as a parameter named 'params'; "
    'set_params refuses a name that is neither a parameter nor a config '
    'field (group__field) at once')


def _clusterer(**params):
  return Clusterer(n_clusters=4, config=tiny_config(batch_size=64), **params)


@pytest.fixture(scope='module')
def fitted():
  """A Clusterer fitted on 300 digits, with numpy's .npz writers failing:
  the images reach the training in memory."""
  with mock.patch.object(np, 'savez', side_effect=AssertionError('savez')), \
      mock.patch.object(np, 'savez_compressed',
                        side_effect=AssertionError('savez_compressed')):
    return _clusterer().fit(IMAGES)


def test_scikit_learns_checks_pass_where_they_apply():
  results = check_estimator(_clusterer(),
                            expected_failed_checks=EXPECTED_FAILED_CHECKS,
                            on_fail=None)
  failed = {r['check_name'] for r in results if r['status'] == 'failed'}
  assert not failed
  # The list is exact: each listed check does fail, for the reason given.
  expected = {r['check_name'] for r in results if r['status'] == 'xfail'}
  assert expected == set(EXPECTED_FAILED_CHECKS)
  passed = {r['check_name'] for r in results if r['status'] == 'passed'}
  assert {'check_estimator_cloneable', 'check_no_attributes_set_in_init',
          'check_get_params_invariance', 'check_set_params',
          'check_estimators_unfitted', 'check_mixin_order'} <= passed


def test_fit_passes_the_images_in_memory_and_labels_are_predict(fitted):
  assert fitted.labels_.shape == (len(IMAGES),)
  np.testing.assert_array_equal(fitted.predict(IMAGES), fitted.labels_)
  assert fitted.results_['dataset'] == 'arrays'
  assert fitted.transform(IMAGES).shape == (len(IMAGES),
                                            fitted.cluster_centers_.shape[1])


def test_fit_is_idempotent_and_fit_predict_is_labels(fitted):
  again = base.clone(fitted)
  np.testing.assert_array_equal(again.fit_predict(IMAGES), fitted.labels_)


def test_clone_round_trips_the_parameters():
  model = _clusterer(train__num_epochs=3, dataset__image_size=8)
  copy = base.clone(model)
  assert copy.get_params() == model.get_params()
  assert copy.train__num_epochs == 3
  assert base.is_clusterer(copy)
  with pytest.raises(NotFittedError):
    copy.predict(IMAGES)


def test_the_constructor_refuses_a_name_that_is_no_parameter():
  # Clusterer(num_clusters=3) trained K=10 without a word.
  with pytest.raises(errors.ConfigError, match='num_clusters: .*n_clusters'):
    Clusterer(num_clusters=3)


def test_set_params_refuses_an_unknown_name_at_once():
  model = _clusterer()
  with pytest.raises(errors.ConfigError, match='train__num_epoch'):
    model.set_params(train__num_epoch=3)
  with pytest.raises(errors.ConfigError, match='bogus'):
    model.set_params(bogus=3)
  assert model.set_params(train__num_epochs=3) is model
  assert model.training_config().train.num_epochs == 3
  assert 'train__num_epoch' not in model.get_params()


def test_a_fitted_model_pickles_and_predicts_the_same(fitted, tmp_path):
  fitted.predict(IMAGES[:10])  # compiles its forward pass
  again = pickle.loads(pickle.dumps(fitted))
  np.testing.assert_array_equal(again.predict(IMAGES), fitted.labels_)
  joblib.dump(fitted, tmp_path / 'model.joblib')
  loaded = joblib.load(tmp_path / 'model.joblib')
  np.testing.assert_array_equal(loaded.predict(IMAGES[:50]),
                                fitted.labels_[:50])


def test_fit_and_predict_leave_jax_and_the_environment_alone():
  jax_before, env_before = dict(jax.config.values), dict(os.environ)
  model = _clusterer().fit(IMAGES)
  model.predict(IMAGES[:20])
  assert dict(jax.config.values) == jax_before
  assert dict(os.environ) == env_before


def test_both_entrances_load_configs_with_one_function(tmp_path):
  calls = []
  real = configs.load

  def spy(config, *args, **kwargs):
    calls.append(config)
    return real(config, *args, **kwargs)

  with mock.patch.object(configs, 'load', spy):
    from_python = Clusterer(config='default').training_config()
    finished = run_main('--config=default', f'--workdir={tmp_path}/w',
                        '--config.train.num_epochs=0')
  assert calls == ['default', 'default']
  assert from_python == real('default')
  # Both see the same config: the mistake is the config's, not the entrance's.
  assert finished.last_line == (
      'jcc: error: config.train.num_epochs=0: must be an integer >= 1.')
  with pytest.raises(errors.ConfigError, match='must be an integer >= 1'):
    Clusterer(config='default', train__num_epochs=0).fit(IMAGES)
  paper = Clusterer(config='mnist:paper').training_config()
  assert paper == real('mnist:paper') and not paper.loss.neighbor_consistency


def test_a_name_resolves_to_the_packaged_config_first(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'mnist').mkdir()  # a folder named like a config
  (tmp_path / 'digits').write_text('raise SystemExit("ran ./digits")\n')
  assert configs.load('mnist').dataset.name == 'mnist'
  assert configs.load('digits').dataset.name == 'digits'
  with pytest.raises(errors.ConfigError, match='neither a file nor a config'):
    configs.load('__init__')
  (tmp_path / 'mine.py').write_text(
      'from jcc.configs import default\n'
      'def get_config(arg="x"):\n'
      '  config = default.get_config()\n'
      '  config.seed = len(arg)\n'
      '  return config\n')
  assert configs.load('mine.py:four').seed == 4
  with pytest.raises(errors.ConfigError, match=r"config=mnist:bogus: .*"
                     "ValueError"):
    configs.load('mnist:bogus')


def test_save_writes_where_load_reads_and_never_into_a_workdir(
    fitted, tmp_path):
  folder = tmp_path / 'model'
  fitted.save(str(folder))
  fitted.save(str(folder))  # a model folder of its own: replaced
  np.testing.assert_array_equal(Clusterer.load(str(folder)).predict(IMAGES),
                                fitted.labels_)
  workdir = tmp_path / 'workdir'
  (workdir / 'checkpoints').mkdir(parents=True)
  with pytest.raises(errors.ConfigError, match="training's workdir"):
    fitted.save(str(workdir))
  (tmp_path / 'a_file').write_text('x')
  with pytest.raises(errors.ConfigError, match='a file stands there'):
    fitted.save(str(tmp_path / 'a_file'))


def test_a_finished_workdir_refuses_other_images_of_the_same_number(
    tmp_path):
  model = _clusterer(workdir=str(tmp_path / 'w')).fit(IMAGES)
  again = _clusterer(workdir=str(tmp_path / 'w'))
  np.testing.assert_array_equal(again.fit(IMAGES).labels_, model.labels_)
  with pytest.raises(errors.CheckpointError,
                     match='trained on other images .as many'):
    again.fit(255 - IMAGES)


def test_predict_files_names_each_image(fitted, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i, path in enumerate(('b.png', 'a/c.png', 'a/d/e.png')):
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(IMAGES[i]).save(tmp_path / path)
  names, clusters = fitted.predict_files(tmp_path)
  assert names == [os.path.join('a', 'c.png'),
                   os.path.join('a', 'd', 'e.png'), 'b.png']
  np.testing.assert_array_equal(clusters, fitted.predict(IMAGES[[1, 2, 0]]))
  with pytest.raises(errors.DataError, match='not a folder'):
    fitted.predict_files(tmp_path / 'b.png')


def test_the_repr_of_a_config_dict_is_one_line():
  text = repr(_clusterer(train__num_epochs=2))
  assert text == ('Clusterer(n_clusters=4, config=<ConfigDict: digits, '
                  'convnet, 8px>, train__num_epochs=2)')
  assert repr(Clusterer(config='mnist')) == "Clusterer(config='mnist')"


def test_a_missing_dependency_says_how_to_install(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  # A script beside the clone's jcc/ on a Python without sklearn.
  code = ("import sys; sys.modules['sklearn'] = None\n"
          'from jcc import Clusterer\n')
  done = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].startswith(
      'ImportError: jcc needs sklearn, which this Python does not have')
  assert 'pip install -e . in the clone' in done.stderr


def test_y_for_a_folder_and_no_images_are_refused_in_one_line(fitted,
                                                              tmp_path):
  np.savez(tmp_path / 'd.npz', images=IMAGES[:20])
  with pytest.raises(errors.DataError, match='y is given with a folder'):
    _clusterer().fit(str(tmp_path / 'd.npz'), np.zeros(20, int))
  with pytest.raises(errors.DataError, match='X holds no image'):
    fitted.predict(IMAGES[:0])
