"""The trained model as a thing of its own: saved and loaded.

At the end of a training (and of an evaluation) the workdir gets
``WORKDIR/saved_model/``: ``variables.msgpack`` (the parameters with DEC's
final centroids, and the batch statistics; flax's msgpack) and ``info.json``
(K, image size, channels, class names, the step and the whole config). With
it, new images are assigned without the training data or the config file:
``python -m jcc.main --mode=predict`` and :class:`jcc.Clusterer` read it.

It is persistence only: :func:`jcc.inference.saved_model_predictor` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from jcc import configs
from jcc import files
from jcc import models
from jcc import step as step_lib
from jcc import validate
from jcc.errors import CheckpointError, ConfigError

MODEL_FOLDER = 'saved_model'
INFO_FILE = 'info.json'
VARIABLES_FILE = 'variables.msgpack'
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """What prediction needs, and nothing of the training data.

  ``variables``: ``{'params': …, 'batch_stats': …}`` as NumPy arrays, DEC's
  final centroids at ``params['clustering']['centroids']``.
  """
  config: ml_collections.ConfigDict
  channels: int
  variables: dict[str, Any]
  step: int
  class_names: tuple[str, ...] | None = None

  @property
  def num_clusters(self) -> int:
    return self.config.dataset.num_clusters

  @property
  def image_size(self) -> int:
    return self.config.dataset.image_size

  @property
  def centroids(self) -> np.ndarray:
    """DEC's centroids in the embedding space, (K, D)."""
    return np.asarray(self.variables['params']['clustering']['centroids'])

  def save(self, folder: str) -> str:
    """Writes the model to ``folder`` (created); returns it."""
    os.makedirs(folder, exist_ok=True)
    with files.atomic_write(os.path.join(folder, VARIABLES_FILE), 'wb') as f:
      f.write(flax.serialization.msgpack_serialize(self.variables))
    info = {
        'format': FORMAT, 'step': self.step,
        'num_clusters': self.num_clusters, 'image_size': self.image_size,
        'channels': self.channels, 'embedding_dim': self.centroids.shape[1],
        'class_names': list(self.class_names) if self.class_names else None,
        # Not where the training data was: the model may go to others.
        'config': configs.without_paths(self.config).to_dict(),
    }
    with files.atomic_write(os.path.join(folder, INFO_FILE)) as f:
      json.dump(info, f, indent=2, default=list)
    return folder


def host_variables(state: step_lib.TrainState) -> dict[str, Any]:
  """The state's params and batch statistics as NumPy (this process's copy
  of the replicated arrays)."""
  local = lambda a: np.asarray(  # noqa: E731
      a.addressable_data(0) if isinstance(a, jax.Array) else a)
  return jax.tree.map(local, {'params': flax.core.unfreeze(state.params),
                              'batch_stats': flax.core.unfreeze(
                                  state.batch_stats)})


def model_folder(path: str) -> str | None:
  """The saved model at ``path``: a workdir holding ``saved_model/``, or
  such a folder itself; None where there is none."""
  for folder in (os.path.join(path, MODEL_FOLDER), path):
    if os.path.isfile(os.path.join(folder, INFO_FILE)):
      return folder
  return None


def load(path: str) -> TrainedModel:
  """The model saved in the workdir (or model folder) ``path``.

  Raises:
    CheckpointError: none there, or one that cannot be read; the message
      says what to do.
  """
  folder = model_folder(path)
  if folder is None:
    hint = ('it has checkpoints from a jcc that did not save the model: '
            'run --mode=evaluate once with its --config to write it'
            if os.path.isdir(os.path.join(path, 'checkpoints')) else
            'train first (--mode=train, or jcc.Clusterer.fit) with this '
            '--workdir')
    raise CheckpointError(f'No saved model in {path} ({MODEL_FOLDER}/'
                          f'{INFO_FILE} is missing): {hint}.')
  try:
    with open(os.path.join(folder, INFO_FILE), encoding='utf-8') as f:
      info = json.load(f)
    with open(os.path.join(folder, VARIABLES_FILE), 'rb') as f:
      variables = flax.serialization.msgpack_restore(f.read())
    config = ml_collections.ConfigDict(info['config'])
    channels, step = int(info['channels']), int(info['step'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f'The saved model in {folder} cannot be read ({type(e).__name__}: '
        f'{e}); --mode=evaluate with its --config writes it again.') from None
  model = TrainedModel(config=config, channels=channels,
                       variables=variables, step=step,
                       class_names=tuple(info.get('class_names') or ()) or None)
  _check(model, info, folder)
  return model


def _check(model: TrainedModel, info: dict, folder: str) -> None:
  """Raises CheckpointError, in one line, for a saved model whose info.json
  describes no model jcc builds, or another one than variables.msgpack
  holds (edited, or the two files from different models)."""
  where = os.path.join(folder, INFO_FILE)
  try:
    validate.check_model_fields(model.config, where)
  except ConfigError as e:
    raise CheckpointError(str(e)) from None
  config = model.config
  stated = {'num_clusters': config.dataset.num_clusters,
            'image_size': config.dataset.image_size}
  for name, value in stated.items():
    if info.get(name, value) != value:
      raise CheckpointError(
          f'{where}: {name}={info[name]!r}, but its config says {value!r}: '
          'the file was edited; put back the original.')
  if model.channels not in (1, 3):
    raise CheckpointError(f'{where}: channels={model.channels!r} must be 1 '
                          'or 3.')
  network = models.build_model(config, model.channels)
  image = jax.ShapeDtypeStruct((1, config.dataset.image_size,
                                config.dataset.image_size, model.channels),
                               np.float32)
  expected = jax.eval_shape(network.init, jax.random.key(0), image)
  expected = {'params': expected['params'],
              'batch_stats': expected.get('batch_stats', {})}
  want = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected),
                                         sep='/')
  have = flax.traverse_util.flatten_dict(model.variables, sep='/')
  for name in sorted(set(want) | set(have)):
    if name not in have or name not in want or (
        tuple(np.shape(have[name])) != tuple(want[name].shape)):
      raise CheckpointError(
          f'{folder}: {VARIABLES_FILE} does not hold the model that '
          f'{INFO_FILE} describes ({name}: '
          f'{tuple(np.shape(have[name])) if name in have else "missing"} '
          f'there, {tuple(want[name].shape) if name in want else "none"} '
          'expected): the two files come from different models.')
