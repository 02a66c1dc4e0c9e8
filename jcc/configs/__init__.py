"""jcc's configs and the one loader that both the command line and
:class:`jcc.Clusterer` use.

``default.py`` defines and documents every field; each dataset's file starts
from it and overrides (shared recipes are named functions in ``default.py``;
no dataset config imports another). :func:`load` turns what a user names into
a config: a packaged name (``'digits'``, ``'mnist:paper'``), a config file
(``path/to/config.py[:ARG]``) or a ``ConfigDict``; :func:`set_fields` applies
``group__field=value`` overrides. ``--config.group.field=value`` on the
command line is absl's, on the config :func:`load` gave.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from typing import Any

import ml_collections

from jcc.errors import ConfigError



# Fields that name files or folders (a leading ~ is the home folder).
PATH_FIELDS = (('dataset', 'path'), ('dataset', 'tfds_data_dir'),
               ('dataset', 'manual_dir'), ('predict', 'input'),
               ('predict', 'output'))


def without_paths(config: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose path fields keep only their last name
  (``/home/me/photos/`` → ``photos``): what a model shared with others may
  say of where its data was."""
  config = config.copy_and_resolve_references()
  for group, field in PATH_FIELDS:
    value = config.get(group, {}).get(field)
    if isinstance(value, str) and value:
      config[group][field] = os.path.basename(os.path.normpath(value))
  return config


def names() -> list[str]:
  """The packaged configs' names (``jcc/configs/*.py``), ``default`` too."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def _module(name: str, path: str | None):
  """The packaged config ``name``, or the file at ``path``, imported."""
  if path is None:
    return importlib.import_module(f'{__name__}.{name}')
  spec = importlib.util.spec_from_file_location('jcc_user_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(config: str | os.PathLike | ml_collections.ConfigDict,
         given_as: str = 'config') -> ml_collections.ConfigDict:
  """The config a user names, as a new ``ConfigDict``.

  ``config``: a packaged config's name, optionally with its argument
  (``'mnist:paper'``); else a Python file, ``FILE.py[:ARG]`` (``~`` is the
  home folder); or a ``ConfigDict`` (copied). A packaged name wins over a
  file or folder of that name in the current directory: ``./mnist`` runs
  only when named so. ``given_as``: how the user gave it, for the messages
  (``'--config'`` on the command line).

  Raises:
    ConfigError: neither a name nor a file, or the file's ``get_config``
      failed; one line naming the cause.
  """
  if isinstance(config, ml_collections.ConfigDict):
    return config.copy_and_resolve_references()
  text = os.fspath(config)
  name, colon, argument = text.partition(':')
  path = None
  if name not in names():
    path = os.path.expanduser(name)
    if os.sep not in name and not name.endswith('.py') and not (
        os.path.isfile(path)):
      raise ConfigError(
          f'{given_as}={text}: neither a file nor a config name '
          f'({", ".join(names())}).')
    try:
      with open(path, 'rb'):
        pass
    except OSError as e:
      raise ConfigError(f'{given_as}={text}: cannot be read ({e}).') from None
  try:
    module = _module(name, path)
    get_config = module.get_config
    loaded = get_config(argument) if colon else get_config()
  except Exception as e:  # pylint: disable=broad-except
    cause = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ConfigError(f'{given_as}={text}: the config file failed '
                      f'({type(e).__name__}: {cause}).') from None
  if not isinstance(loaded, ml_collections.ConfigDict):
    raise ConfigError(f'{given_as}={text}: get_config() returned a '
                      f'{type(loaded).__name__}, not an ml_collections '
                      'ConfigDict.')
  return loaded


def _field(config: ml_collections.ConfigDict,
           name: str) -> tuple[ml_collections.ConfigDict, str]:
  """(group, field) of the ``group__field`` parameter ``name``.

  Raises:
    ConfigError: the config has no such field.
  """
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
  return node, field


def check_field_names(config: ml_collections.ConfigDict,
                      names: list[str]) -> None:
  """Raises ConfigError for a ``group__field`` name ``config`` lacks."""
  for name in names:
    _field(config, name)


def set_fields(config: ml_collections.ConfigDict,
               params: dict[str, Any]) -> None:
  """Sets ``group__field=value`` parameters as ``config.group.field``.

  Raises:
    ConfigError: a field the config does not have, or a value of the
      wrong type for it.
  """
  for name, value in params.items():
    node, field = _field(config, name)
    if isinstance(node[field], tuple) and isinstance(value, list):
      value = tuple(value)
    try:
      node[field] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'{name}={value!r}: {e}') from None
