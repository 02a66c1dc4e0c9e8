"""Command line: python -m jcc.main --config=configs/digits.py --workdir=DIR.

Flags:
  --config: an ml_collections config file, or the name of one of jcc's own
    (digits, mnist, cifar10_small, …: jcc/configs/); override fields with
    --config.train.num_epochs=50 and the like. --mode=predict needs none:
    the workdir's saved model brings its own.
  --workdir: where checkpoints, results.json and logs go; a run resumes from
    the latest checkpoint found there.
  --mode: train (train, resuming if possible, then evaluate), evaluate
    (evaluate the latest checkpoint and write its report) or predict (assign
    the images of --config.predict.input=FOLDER|FILE.npz to the clusters).

A mistake in the config, the data or the workdir ends the program with one
line on stderr and exit status 2; a SIGTERM or a Ctrl-C (SIGINT) during
training writes a checkpoint after the current step and exits 0 (a second
Ctrl-C aborts at once). In a run of several processes (config.distributed),
a process that loses a peer exits with status 75 (jcc.distributed).
"""

import os
import runpy
import sys
import traceback

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

import jcc.configs
from jcc import distributed
from jcc import progress
from jcc import workflows
from jcc.errors import UserError, quiet_disk_full_in_threads
from jcc.signals import EvaluationStopped

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for this run.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'evaluate', 'predict'],
    'train (and evaluate), evaluate only, or predict new images.')
flags.mark_flags_as_required(['workdir'])

CONFIG_FOLDER = os.path.dirname(jcc.configs.__file__)
PREDICTION_CONFIG = os.path.join(os.path.dirname(CONFIG_FOLDER),
                                 'prediction_config.py')


def _fail(message: str, status: int = 2, prefix: str = 'jcc: error: ') -> None:
  print(f'{prefix}{message}', file=sys.stderr, flush=True)
  if distributed.is_multiprocess():
    # The other processes are told and stop too, rather than waiting for
    # this one in a collective.
    distributed.leave(message, status)
  sys.exit(status)


def _flag_value(argv: list[str], name: str) -> tuple[int, str] | None:
  """(position, value) of --NAME=VALUE or --NAME VALUE in argv, where given."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return i, arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return i, argv[i + 1]
  return None


def _config_argument(argv: list[str]) -> str | None:
  """The value of --config (FILE or FILE:ARG), where given."""
  found = _flag_value(argv, 'config')
  return found and found[1]


def _with_config_file(argv: list[str]) -> list[str]:
  """argv with --config naming a file: a packaged config's name becomes its
  path, and --mode=predict without --config gets the prediction config."""
  found = _flag_value(argv, 'config')
  mode = (_flag_value(argv, 'mode') or (0, 'train'))[1]
  if found is None:
    if mode == 'predict':
      return argv[:1] + [f'--config={PREDICTION_CONFIG}'] + argv[1:]
    if '--help' in argv or '--helpfull' in argv:
      return argv
    _fail('--config is missing: name a config (--config=digits, or a file '
          'such as configs/digits.py; jcc/configs/ holds them all).')
  position, value = found
  name, colon, argument = value.partition(':')
  packaged = os.path.join(CONFIG_FOLDER, f'{name}.py')
  if (not name or os.sep in name or name.endswith('.py') or
      os.path.exists(name)):
    return argv
  if not os.path.isfile(packaged):
    names = sorted(f[:-3] for f in os.listdir(CONFIG_FOLDER)
                   if f.endswith('.py') and not f.startswith('_'))
    _fail(f'--config={value}: neither a file nor a config name '
          f'({", ".join(names)}).')
  argv = list(argv)
  if argv[position] == '--config':
    argv[position + 1] = f'{packaged}{colon}{argument}'
  else:
    argv[position] = f'--config={packaged}{colon}{argument}'
  return argv


def _unknown_fields(argv: list[str]) -> list[str]:
  """The --config.FIELD overrides whose FIELD the config file lacks."""
  path, _, argument = (_config_argument(argv) or '').partition(':')
  get_config = runpy.run_path(os.path.expanduser(path))['get_config']
  config = get_config(argument) if argument else get_config()
  unknown = []
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    field = arg[len('--config.'):].split('=', 1)[0]
    node = config
    for part in field.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        unknown.append(field)
        break
      node = node[part]
  return unknown


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with config mistakes reported in one line."""
  argv = _with_config_file(argv)
  config_argument = _config_argument(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = ' '.join(str(e).split())  # one line, whatever absl wrote
    _fail(f'{message} (--helpfull lists the flags; jcc/configs/default.py '
          'every config field)')
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a field that does not
    # exist (the config is locked); a config file's own code may too.
    try:
      unknown = _unknown_fields(argv)
    except Exception:  # pylint: disable=broad-except
      unknown = []
    if unknown:
      _fail(f'unknown config field{"s" if len(unknown) > 1 else ""} '
            f'{", ".join(unknown)}: jcc/configs/default.py lists every '
            'field.')
    _fail(f'--config={config_argument}: the config file failed '
          f'({type(e).__name__}: {e}).')
  except Exception as e:  # pylint: disable=broad-except
    # The config file itself: a syntax error, or its get_config raised.
    _fail(f'--config={config_argument}: the config file failed '
          f'({type(e).__name__}: {str(e).strip().splitlines()[0]}).')


def _loaded_config() -> ml_collections.ConfigDict:
  """--config's config, or one line where its file could not be read."""
  config = _CONFIG.value
  if isinstance(config, ml_collections.ConfigDict):
    return config
  try:  # ml_collections defers a file it could not read to the first use
    config.keys()
  except OSError as e:
    cause = str(e).strip().splitlines()[-1].strip()
    _fail(f'--config={_config_argument(sys.argv)}: cannot be read '
          f'({cause}).')
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  progress.configure_command_line()
  quiet_disk_full_in_threads()
  config, workdir = _loaded_config(), _WORKDIR.value
  try:
    if _MODE.value == 'train':
      workflows.train_and_evaluate(config, workdir)
    elif _MODE.value == 'evaluate':
      workflows.evaluate_workdir(config, workdir)
    else:
      workflows.predict_workdir(config, workdir)
  except UserError as e:
    _fail(str(e))
  except FloatingPointError as e:
    _fail(str(e), 1, prefix='jcc: ')
  except KeyboardInterrupt:
    # A second Ctrl-C during training, or one before it began.
    _fail('interrupted; the workdir keeps its last checkpoint.', 130,
          prefix='jcc: ')
  except EvaluationStopped as e:
    # Only raised here when several processes run: this one stops alone.
    _fail(f'{e} during the evaluation', 0, prefix='jcc: stopped: ')
  except Exception as e:  # pylint: disable=broad-except
    if not distributed.is_multiprocess():
      raise
    if distributed.is_peer_failure(e):
      distributed.exit_peer_lost(
          f'a collective failed ({str(e).strip().splitlines()[0][:160]})')
    traceback.print_exc()
    _fail('an unexpected error (above)', 1, prefix='jcc: ')
  distributed.finish()


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
