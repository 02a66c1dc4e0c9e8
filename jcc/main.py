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
import signal
import sys
import traceback


def _has_checkpoint(workdir: str) -> bool:
  folder = os.path.join(os.path.expanduser(workdir), 'checkpoints')
  return os.path.isdir(folder) and any(name.isdigit()
                                       for name in os.listdir(folder))


def _interrupted(workdir: str | None) -> str:
  """The line that ends a run stopped by Ctrl-C outside its checkpointing."""
  kept = ('the workdir keeps its last checkpoint' if workdir and
          _has_checkpoint(workdir) else 'no checkpoint was written yet')
  return f'jcc: interrupted; {kept}.'


def _interrupted_at_once(signum, frame) -> None:
  """Ctrl-C while jcc starts (imports, data, compilation): ends the process
  at once with its one line and status 130. Unwinding a KeyboardInterrupt
  through JAX's native threads there can crash the interpreter instead. The
  training loop and the evaluation route the signal their own way (jcc.signals)
  and hand it back here when they end."""
  del signum, frame
  workdir = None
  for i, arg in enumerate(sys.argv):
    if arg.startswith('--workdir='):
      workdir = arg.split('=', 1)[1]
    elif arg == '--workdir' and i + 1 < len(sys.argv):
      workdir = sys.argv[i + 1]
  print(_interrupted(workdir), file=sys.stderr, flush=True)
  os._exit(130)  # pylint: disable=protected-access


# Before the imports below, which take seconds; as Python does, not where
# the caller has Ctrl-C ignored (a job started in the background).
if __name__ == '__main__' and (
    signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
  signal.signal(signal.SIGINT, _interrupted_at_once)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import ml_collections
from ml_collections import config_flags

from jcc import configs
from jcc import distributed
from jcc import parallel
from jcc import progress
from jcc import workflows
from jcc.errors import UserError, quiet_disk_full_in_threads
from jcc.signals import EvaluationStopped

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for this run.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'evaluate', 'predict'],
    'train (and evaluate), evaluate only, or predict new images.')
flags.mark_flags_as_required(['workdir'])
# --config: defined once its config is loaded (_parse_flags), by
# jcc.configs.load, the loader jcc.Clusterer uses too.
_CONFIG = None

PREDICTION_CONFIG = os.path.join(os.path.dirname(configs.__path__[0]),
                                 'prediction_config.py')


def _fail(message: str, status: int = 2, prefix: str = 'jcc: error: ') -> None:
  print(f'{prefix}{message}', file=sys.stderr, flush=True)
  if distributed.is_multiprocess():
    # The other processes are told and stop too, rather than waiting for
    # this one in a collective.
    distributed.leave(message, status)
  sys.exit(status)


def _flag_values(argv: list[str], name: str) -> list[tuple[int, int, str]]:
  """(position, number of arguments, value) of each --NAME=VALUE or --NAME
  VALUE in argv."""
  found = []
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      found.append((i, 1, arg.split('=', 1)[1]))
    elif arg == f'--{name}' and i + 1 < len(argv):
      found.append((i, 2, argv[i + 1]))
  return found


def _take_config(argv: list[str]) -> tuple[ml_collections.ConfigDict | None,
                                           list[str]]:
  """(--config's config, argv without --config): a packaged config's name
  or a file, loaded by :func:`jcc.configs.load`; --mode=predict without
  --config gets the prediction config (the saved model brings the rest)."""
  found = _flag_values(argv, 'config')
  modes = _flag_values(argv, 'mode')
  mode = modes[-1][2] if modes else 'train'
  if len(found) > 1:
    _fail('--config is given more than once: name one config.')
  if not found:
    if mode == 'predict':
      return configs.load(PREDICTION_CONFIG), argv
    if '--help' in argv or '--helpfull' in argv:
      return None, argv
    _fail('--config is missing: name a config (--config=digits, or a file '
          'such as configs/digits.py; jcc/configs/ holds them all).')
  position, count, value = found[0]
  try:
    config = configs.load(value, given_as='--config')
  except UserError as e:
    _fail(str(e))
  return config, argv[:position] + argv[position + count:]


def _unknown_fields(argv: list[str],
                    config: ml_collections.ConfigDict) -> list[str]:
  """The --config.FIELD overrides whose FIELD ``config`` lacks."""
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
  global _CONFIG
  config, argv = _take_config(argv)
  if config is not None:
    unknown = _unknown_fields(argv, config)
    if unknown and not _unknown_fields(argv, configs.load('default')):
      # Fields of the full config, given to --mode=predict without --config.
      _fail(f'{", ".join(unknown)}: not read by --mode=predict without '
            '--config, whose saved model brings its own; only predict.*, '
            'dataset.skip_bad_images and distributed.* apply.')
    if unknown:
      _fail(f'unknown config field{"s" if len(unknown) > 1 else ""} '
            f'{", ".join(unknown)}: jcc/configs/default.py lists every '
            'field.')
    if 'config' in flags.FLAGS:  # parsed before in this process (tests)
      delattr(flags.FLAGS, 'config')
    _CONFIG = config_flags.DEFINE_config_dict(
        'config', config, 'Training configuration.', lock_config=True,
        sys_argv=argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = ' '.join(str(e).split())  # one line, whatever absl wrote
    _fail(f'{message} (--helpfull lists the flags; jcc/configs/default.py '
          'every config field)')


def _use_one_cpu_device_per_core(config: ml_collections.ConfigDict) -> None:
  """The command line's choice, for this process alone: on a CPU, one JAX
  device per core (jcc.parallel.use_one_cpu_device_per_core), unless the
  run has several processes (they may share a host's cores). The Python
  API leaves JAX's settings to its caller."""
  if distributed.is_requested(config):
    return
  train = config.get('train')
  parallel.use_one_cpu_device_per_core(
      train.batch_size if train and _MODE.value != 'predict' else None)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected argument{"s" if len(argv) > 2 else ""} '
          f'{" ".join(argv[1:])}: jcc takes flags only (--config=NAME '
          '--workdir=DIR [--mode=MODE] [--config.GROUP.FIELD=VALUE]).')
  progress.configure_command_line()
  quiet_disk_full_in_threads()
  config, workdir = _CONFIG.value, _WORKDIR.value
  _use_one_cpu_device_per_core(config)
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
    # A second Ctrl-C during training.
    _fail(_interrupted(workdir), 130, prefix='')
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
