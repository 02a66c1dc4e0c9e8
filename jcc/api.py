"""``jcc.Clusterer``: jcc as a scikit-learn estimator.

>>> from jcc import Clusterer
>>> model = Clusterer(n_clusters=10, config='digits', train__num_epochs=20)
>>> model.fit(images)            # uint8 (N, H, W) or (N, H, W, C), a folder
>>> model.labels_                #   or an .npz; trains as the command line
>>> model.predict(new_images)    # any size and channel count
>>> model.save('my_model'); Clusterer.load('my_model').transform(new_images)

Training is :func:`jcc.workflows.train_and_evaluate`, the command line's own,
on the config :func:`jcc.configs.load` gives (the command line's loader), with
the images passed in memory, on a workdir (a temporary one unless ``workdir``
is given). Prediction runs the saved model (:mod:`jcc.inference`), needing
neither the training data nor a config. Nothing here changes JAX's settings
or the environment: on a CPU, JAX gives this process one device unless told
otherwise (docs/multihost.md, "On a CPU").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

from absl import logging
import ml_collections
import numpy as np
from sklearn import base
from sklearn.utils import validation

from jcc import configs
from jcc import inference
from jcc import progress
from jcc import sources
from jcc import trained_model
from jcc import workflows
from jcc.errors import ConfigError, DataError

ImagesLike = np.ndarray | str | os.PathLike
# The parameters that are not config fields.
_OWN_PARAMS = ('n_clusters', 'config', 'workdir')


def _check_param_names(names) -> None:
  """Raises on a name that is neither the constructor's nor a config
  field's (``group__field``): a misspelt parameter must not be ignored."""
  for name in names:
    if '__' not in name:
      raise ConfigError(
          f'Unknown parameter {name}: Clusterer takes n_clusters, config, '
          'workdir and config fields as group__field (train__num_epochs).')


class Clusterer(base.ClusterMixin, base.TransformerMixin, base.BaseEstimator):
  """Deep embedding clustering of images, a scikit-learn estimator.

  Args:
    n_clusters: K, the number of clusters (at least 2).
    config: a packaged config's name (``'digits'``, ``'mnist'``,
      ``'mnist:paper'``, ``'cifar10_small'``, … :func:`jcc.configs.names`),
      a config file, or an ``ml_collections.ConfigDict``: the network, image
      size and schedule, as ``--config`` names them.
    workdir: where checkpoints, results and the saved model go; ``fit``
      resumes from it as the command line does. None: a temporary folder,
      removed after ``fit`` (``save`` keeps the model).
    **params: config fields, ``group__field=value``
      (``train__num_epochs=50``, ``dataset__image_size=16``), as
      scikit-learn's nested parameters.

  Attributes (after ``fit``; ``load`` sets all but ``labels_`` and
  ``results_``):
    labels_: (N,) the training images' clusters (the cluster head's
      argmax), in ``X``'s order (a folder's: its files' sorted paths).
    cluster_centers_: (K, D) DEC's centroids in the embedding space.
    results_: what ``fit`` wrote to results.json (metrics where there are
      labels, the K sweep).
    model_: the trained model (:class:`jcc.trained_model.TrainedModel`).
  """

  def __init__(self, n_clusters: int = 10,
               config: str | ml_collections.ConfigDict = 'digits',
               workdir: str | None = None, **params: Any):
    self.n_clusters = n_clusters
    self.config = config
    self.workdir = workdir
    _check_param_names(params)
    for name, value in params.items():
      setattr(self, name, value)

  # -- scikit-learn's parameter protocol -----------------------------------

  def get_params(self, deep: bool = True) -> dict[str, Any]:
    """The constructor's arguments, config fields (``group__field``) too."""
    del deep  # no nested estimators: a ``__`` names a config field
    return {**{name: getattr(self, name) for name in _OWN_PARAMS},
            **self._config_fields()}

  def _config_fields(self) -> dict[str, Any]:
    """The ``group__field`` parameters (stored as attributes)."""
    return {name: value for name, value in vars(self).items()
            if '__' in name and not name.startswith('_')}

  def set_params(self, **params: Any) -> Clusterer:
    """Sets parameters. A name that is neither a parameter nor a field of
    the config (``group__field``) raises at once; values are checked by
    ``fit``."""
    fields = {k: v for k, v in params.items() if k not in _OWN_PARAMS}
    _check_param_names(fields)
    try:
      config = configs.load(params.get('config', self.config))
    except (ConfigError, TypeError):
      config = None  # fit says what is wrong with it
    if config is not None:
      configs.check_field_names(config, list(fields))
    for name, value in params.items():
      setattr(self, name, value)
    return self

  def __repr__(self, N_CHAR_MAX: int = 700) -> str:  # pylint: disable=invalid-name
    if not isinstance(self.config, ml_collections.ConfigDict):
      return super().__repr__(N_CHAR_MAX)
    # A ConfigDict would print whole (dozens of lines): its dataset, network
    # and image size stand for it.
    config = self.config
    params = {**self.get_params(), 'config': (
        f"<ConfigDict: {config.get('dataset', {}).get('name')}, "
        f"{config.get('model', {}).get('backbone')}, "
        f"{config.get('dataset', {}).get('image_size')}px>")}
    return 'Clusterer(' + ', '.join(
        f'{name}={value if name == "config" else repr(value)}'
        for name, value in params.items()
        if name == 'config' or value is not None) + ')'

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    # X is images: uint8 arrays, or a folder's or an .npz's path (string).
    # The checks scikit-learn runs on 2-D feature matrices stay on, and
    # tests/test_api.py lists those that cannot apply to images.
    tags.input_tags.two_d_array = True
    tags.input_tags.string = True
    tags.non_deterministic = False
    return tags

  def training_config(self) -> ml_collections.ConfigDict:
    """The config ``fit`` trains with (the parameters applied)."""
    k = self.n_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
      raise ConfigError(f'n_clusters={k!r}: ask for a whole number of at '
                        'least 2 clusters.')
    config = configs.load(self.config)
    config.dataset.num_clusters = int(k)
    configs.set_fields(config, self._config_fields())
    return config

  # -- training ------------------------------------------------------------

  def fit(self, X: ImagesLike, y: np.ndarray | None = None) -> Clusterer:
    """Trains on the images ``X``; ``y``, where given, only evaluates.

    ``X``: uint8 (N, H, W) or (N, H, W, C) with C 1 or 3, a folder of
    images, or an .npz of ``images`` (and ``labels``). Images are resized to
    the config's size. ``y``: (N,) class indices of an array ``X``, for the
    evaluation in ``results_``. Returns self.
    """
    config = self.training_config()
    dataset = _training_source(config, X, y)
    with contextlib.ExitStack() as stack:
      if self.workdir is None:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(
            prefix='jcc-'))
      else:
        workdir = os.path.expanduser(self.workdir)
        os.makedirs(workdir, exist_ok=True)
      with progress.info_logging():
        evaluation = workflows.train_and_evaluate(config, workdir, dataset)
        if self.workdir is None and evaluation is not None:
          logging.info('The workdir above is temporary and goes now; '
                       'Clusterer(workdir=DIR) keeps its report and '
                       'checkpoints, save(DIR) the model.')
    if evaluation is None:
      raise KeyboardInterrupt(
          'training stopped by a signal' + (
              f'; fit again with workdir={self.workdir!r} resumes'
              if self.workdir else ''))
    self._set_model(evaluation.model)
    self.results_ = evaluation.results
    self.labels_ = evaluation.assignments.cluster.astype(np.int64)
    return self

  # -- the trained model ---------------------------------------------------

  def _set_model(self, model: trained_model.TrainedModel) -> None:
    self.model_ = model
    self.cluster_centers_ = model.centroids
    self._predictor = None

  def __getstate__(self) -> dict[str, Any]:
    # The compiled forward pass is rebuilt on the next prediction.
    return {k: v for k, v in self.__dict__.items() if k != '_predictor'}

  def _outputs(self, X: ImagesLike) -> dict[str, np.ndarray]:
    validation.check_is_fitted(self, 'model_')
    model = self.model_
    images = prediction_images(X, model.image_size, model.channels,
                               model.config.dataset.skip_bad_images)
    if getattr(self, '_predictor', None) is None:
      self._predictor = inference.saved_model_predictor(model)
    return self._predictor(model.variables, images)

  def predict(self, X: ImagesLike) -> np.ndarray:
    """Each image's cluster (the cluster head's argmax), (N,) int."""
    return self.predict_proba(X).argmax(axis=1)

  def predict_proba(self, X: ImagesLike) -> np.ndarray:
    """The cluster head's probabilities, (N, K); rows sum to 1."""
    return self._outputs(X)['cluster_probs']

  def transform(self, X: ImagesLike) -> np.ndarray:
    """Each image's embedding (the backbone's features), (N, D)."""
    return self._outputs(X)['embedding']

  def predict_files(self, folder: str | os.PathLike
                    ) -> tuple[list[str], np.ndarray]:
    """(names, clusters) of the images under ``folder``: each file's path
    relative to it, in sorted order, and its cluster. Files that cannot be
    read are left out, named in a warning (config.dataset.skip_bad_images
    of the model's config makes them an error instead)."""
    validation.check_is_fitted(self, 'model_')
    path = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(path):
      raise DataError(f'{path}: not a folder; predict_files takes a folder '
                      '(predict takes arrays and .npz files too).')
    model = self.model_
    sources.check_predict_input(path, given_as='folder')
    names, images = sources.load_predict_images(
        path, model.image_size, model.channels,
        model.config.dataset.skip_bad_images, given_as='folder')
    return names, self.predict(images)

  def save(self, path: str) -> str:
    """Writes the fitted model to the folder ``path`` (created, or replacing
    the model an earlier ``save`` wrote there); returns it.

    ``Clusterer.load(path)`` reads it back. A workdir (a training's folder,
    with its own model and checkpoints) is refused, and so is a file.
    """
    validation.check_is_fitted(self, 'model_')
    path = os.path.expanduser(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
      raise ConfigError(f'save({path!r}): a file stands there; give a folder '
                        'path (it is created).')
    if any(os.path.exists(os.path.join(path, name)) for name in (
        trained_model.MODEL_FOLDER, 'checkpoints')):
      raise ConfigError(
          f'save({path!r}): that is a training\'s workdir, with a model of '
          'its own (Clusterer.load reads it as it is); save to another '
          'folder.')
    return self.model_.save(path)

  @classmethod
  def load(cls, path: str) -> Clusterer:
    """A fitted Clusterer from a workdir or a folder ``save`` wrote."""
    model = trained_model.load(os.path.expanduser(path))
    clusterer = cls(n_clusters=model.num_clusters, config=model.config)
    clusterer._set_model(model)  # pylint: disable=protected-access
    return clusterer


def prediction_images(X: ImagesLike, image_size: int, channels: int,
                      skip_bad_images: bool = True) -> np.ndarray:
  """``X`` as uint8 (N, image_size, image_size, channels), resized and
  converted as in training (checked as ``--mode=predict`` checks its
  input)."""
  if isinstance(X, (str, os.PathLike)):
    X = os.path.expanduser(os.fspath(X))
  elif not isinstance(X, np.ndarray):
    raise DataError(f'X is a {type(X).__name__}: give a uint8 NumPy array of '
                    'images, a folder of images or an .npz file.')
  sources.check_predict_input(X, given_as='X')
  return sources.load_predict_images(X, image_size, channels,
                                     skip_bad_images, given_as='X')[1]


def _training_source(config: ml_collections.ConfigDict, X: ImagesLike,
                     y: np.ndarray | None) -> sources.ImageDataset | None:
  """Points ``config.dataset`` at ``X``: an array is the in-memory dataset
  returned ('arrays'); a folder or an .npz is read by its source (None)."""
  if isinstance(X, np.ndarray):
    config.dataset.name, config.dataset.path = 'arrays', ''
    return sources.from_arrays(X, y)
  if not isinstance(X, (str, os.PathLike)):
    raise DataError(f'X is a {type(X).__name__}: give a uint8 NumPy array of '
                    'images, a folder of images or an .npz file.')
  if y is not None:
    raise DataError('y is given with a folder or an .npz: their labels come '
                    'from the class subfolders or the file\'s `labels`; '
                    'leave y out.')
  path = os.path.abspath(os.path.expanduser(os.fspath(X)))
  if os.path.isfile(path) and path.endswith('.npz'):
    config.dataset.name = 'npz'
  elif os.path.isdir(path):
    config.dataset.name = 'folder'
  else:
    raise DataError(f'X={os.fspath(X)!r}: not a folder of images or an .npz '
                    'file.')
  config.dataset.path = path
  return None
