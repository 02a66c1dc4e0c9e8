"""``jcc.Clusterer``: jcc as a scikit-learn-style estimator.

>>> from jcc import Clusterer
>>> model = Clusterer(n_clusters=10, config='digits', train__num_epochs=20)
>>> model.fit(images)            # uint8 (N, H, W) or (N, H, W, C), a folder
>>> model.labels_                #   or an .npz; trains as the command line
>>> model.predict(new_images)    # any size and channel count
>>> model.save('my_model'); Clusterer.load('my_model').transform(new_images)

Training is :func:`jcc.workflows.train_and_evaluate` on a workdir (a
temporary one unless ``workdir`` is given); prediction runs the saved model
(:mod:`jcc.trained_model`), needing neither the training data nor a config.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pkgutil
import tempfile
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from jcc import parallel
from jcc import progress
from jcc import sources
from jcc import trained_model
from jcc import workflows
from jcc.errors import ConfigError, DataError

ImagesLike = np.ndarray | str | os.PathLike
# The packaged configs that are not a dataset's.
_NOT_DATASETS = ('default',)


def config_names() -> list[str]:
  """The names of the packaged dataset configs (``jcc/configs/*.py``)."""
  import jcc.configs  # pylint: disable=import-outside-toplevel
  return sorted(m.name for m in pkgutil.iter_modules(jcc.configs.__path__)
                if m.name not in _NOT_DATASETS)


def load_config(config: str | os.PathLike | ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
  """A config from a packaged config's name, a config file or a ConfigDict
  (copied)."""
  if isinstance(config, ml_collections.ConfigDict):
    return config.copy_and_resolve_references()
  text = os.fspath(config)
  if text in config_names():
    return importlib.import_module(f'jcc.configs.{text}').get_config()
  path = os.path.expanduser(text)
  if not path.endswith('.py') or not os.path.isfile(path):
    raise ConfigError(
        f'config={text!r}: not a config name ({", ".join(config_names())}) '
        'nor a config file (.py).')
  spec = importlib.util.spec_from_file_location('jcc_user_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'config={text!r}: the config file failed '
                      f'({type(e).__name__}: {e}).') from None


def set_fields(config: ml_collections.ConfigDict,
               params: dict[str, Any]) -> None:
  """Sets ``group__field=value`` parameters as ``config.group.field``."""
  for name, value in params.items():
    *groups, field = name.split('__')
    node = config
    for part in groups:
      is_group = isinstance(node, ml_collections.ConfigDict)
      node = node.get(part) if is_group else None
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
      raise ConfigError(
          f'Unknown parameter {name}: the config has no field '
          f'{".".join(groups + [field])} (jcc/configs/default.py lists them; '
          'a group and its field are joined by __, e.g. train__num_epochs).')
    if isinstance(node[field], tuple) and isinstance(value, list):
      value = tuple(value)
    try:
      node[field] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'{name}={value!r}: {e}') from None


class Clusterer:
  """Deep embedding clustering of images, with scikit-learn's interface.

  Args:
    n_clusters: K, the number of clusters (at least 2).
    config: a packaged config's name (``'digits'``, ``'mnist'``,
      ``'cifar10_small'``, … :func:`config_names`), a config file, or an
      ``ml_collections.ConfigDict``: the network, image size and schedule.
    workdir: where checkpoints, results and the saved model go; ``fit``
      resumes from it as the command line does. None: a temporary folder,
      removed after ``fit`` (``save`` keeps the model).
    **params: config fields, ``group__field=value``
      (``train__num_epochs=50``, ``dataset__image_size=16``), as
      scikit-learn's nested parameters.

  Attributes (after ``fit`` or ``load``):
    labels_: (N,) the training images' clusters (the cluster head), in
      ``X``'s order (a folder's: its files' sorted paths); after ``fit``
      only.
    cluster_centers_: (K, D) DEC's centroids in the embedding space.
    results_: what ``fit`` wrote to results.json (metrics where there are
      labels, the K sweep); after ``fit`` only.
  """

  def __init__(self, n_clusters: int = 10,
               config: str | ml_collections.ConfigDict = 'digits',
               workdir: str | None = None, **params: Any):
    self.n_clusters = n_clusters
    self.config = config
    self.workdir = workdir
    self._params = dict(params)
    self._model: trained_model.TrainedModel | None = None
    self._predictor = None

  # -- scikit-learn's parameter protocol -----------------------------------

  def get_params(self, deep: bool = True) -> dict[str, Any]:
    del deep  # no nested estimators
    return {'n_clusters': self.n_clusters, 'config': self.config,
            'workdir': self.workdir, **self._params}

  def set_params(self, **params: Any) -> Clusterer:
    for name, value in params.items():
      if name in ('n_clusters', 'config', 'workdir'):
        setattr(self, name, value)
      else:
        self._params[name] = value
    return self

  def __repr__(self) -> str:
    shown = ', '.join(f'{k}={v!r}' for k, v in self.get_params().items()
                      if k != 'workdir' or v is not None)
    return f'Clusterer({shown})'

  def training_config(self) -> ml_collections.ConfigDict:
    """The config ``fit`` trains with (the parameters applied)."""
    k = self.n_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
      raise ConfigError(f'n_clusters={k!r}: ask for a whole number of at '
                        'least 2 clusters.')
    config = load_config(self.config)
    config.dataset.num_clusters = int(k)
    set_fields(config, self._params)
    return config

  # -- training ------------------------------------------------------------

  def fit(self, X: ImagesLike, y: np.ndarray | None = None) -> Clusterer:
    """Trains on the images ``X``; ``y``, where given, only evaluates.

    ``X``: uint8 (N, H, W) or (N, H, W, C) with C 1 or 3, a folder of
    images, or an .npz of ``images`` (and ``labels``). Images are resized to
    the config's size. Returns self.
    """
    config = self.training_config()
    with contextlib.ExitStack() as stack:
      if self.workdir is None:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(
            prefix='jcc-'))
      else:
        workdir = os.path.expanduser(self.workdir)
        os.makedirs(workdir, exist_ok=True)
      _set_source(config, X, y, stack)
      with progress.info_logging():
        results = workflows.train_and_evaluate(config, workdir)
        if self.workdir is None and results is not None:
          logging.info('The workdir above is temporary and goes now; '
                       'Clusterer(workdir=DIR) keeps its report and '
                       'checkpoints, save(DIR) the model.')
      if results is None:
        raise KeyboardInterrupt(
            'training stopped by a signal' + (
                f'; fit again with workdir={self.workdir!r} resumes'
                if self.workdir else ''))
      self._set_model(trained_model.load(workdir))
    self.results_ = results
    self.labels_ = self.predict(X)
    return self

  def fit_predict(self, X: ImagesLike, y: np.ndarray | None = None
                  ) -> np.ndarray:
    """``fit(X)``, then the training images' clusters."""
    return self.fit(X, y).labels_

  # -- the trained model ---------------------------------------------------

  def _set_model(self, model: trained_model.TrainedModel) -> None:
    self._model, self._predictor = model, None
    self.n_clusters = model.num_clusters
    self.cluster_centers_ = model.centroids

  def _outputs(self, X: ImagesLike) -> dict[str, np.ndarray]:
    if self._model is None:
      raise ConfigError('This Clusterer is not fitted yet: call fit(images) '
                        'first, or Clusterer.load(workdir).')
    model = self._model
    images = prediction_images(X, model.image_size, model.channels,
                               model.config.dataset.skip_bad_images)
    if self._predictor is None:
      parallel.use_one_cpu_device_per_core()  # prediction pads its batches
      self._predictor = model.predictor()
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

  def save(self, path: str) -> str:
    """Writes the fitted model to the folder ``path``; returns it."""
    if self._model is None:
      raise ConfigError('Nothing to save: call fit(images) first.')
    return self._model.save(os.path.expanduser(path))

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
  converted as in training."""
  if isinstance(X, np.ndarray):
    return sources.conform_images(sources.as_nhwc_uint8(X, 'X'), image_size,
                                  channels)
  if isinstance(X, (str, os.PathLike)):
    path = os.path.expanduser(os.fspath(X))
    if not os.path.exists(path):
      raise DataError(f'{path}: no such file or folder.')
    sources.check_predict_input(path)
    return sources.load_predict_images(path, image_size, channels,
                                       skip_bad_images)[1]
  raise DataError(f'X is a {type(X).__name__}: give a uint8 NumPy array of '
                  'images, a folder of images or an .npz file.')


def _set_source(config: ml_collections.ConfigDict, X: ImagesLike,
                y: np.ndarray | None, stack: contextlib.ExitStack) -> None:
  """Points ``config.dataset`` at ``X`` (an array goes to a temporary .npz)."""
  if isinstance(X, np.ndarray):
    images = sources.as_nhwc_uint8(X, 'X')
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix='jcc-'))
    path = os.path.join(folder, 'images.npz')
    arrays = {'images': images}
    if y is not None:
      arrays['labels'] = np.asarray(y)
    np.savez(path, **arrays)
    config.dataset.name, config.dataset.path = 'npz', path
    return
  if not isinstance(X, (str, os.PathLike)):
    raise DataError(f'X is a {type(X).__name__}: give a uint8 NumPy array of '
                    'images, a folder of images or an .npz file.')
  path = os.path.abspath(os.path.expanduser(os.fspath(X)))
  if os.path.isfile(path) and path.endswith('.npz'):
    config.dataset.name = 'npz'
  elif os.path.isdir(path):
    config.dataset.name = 'folder'
  else:
    raise DataError(f'X={os.fspath(X)!r}: not a folder of images or an .npz '
                    'file.')
  config.dataset.path = path
