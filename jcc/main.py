"""Command line: python -m jcc.main --config=configs/digits.py --workdir=DIR.

Flags:
  --config: an ml_collections config file; override fields with
    --config.train.num_epochs=50 and the like.
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

import logging as pylogging
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jcc import distributed
from jcc import workflows
from jcc.errors import UserError
from jcc.train import EvaluationStopped

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for this run.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'evaluate', 'predict'],
    'train (and evaluate), evaluate only, or predict new images.')
flags.mark_flags_as_required(['config', 'workdir'])

_NOISY = ('/orbax/', '/etils/', '/tensorstore/', '/jax/_src/xla_bridge.py')


class QuietLibraries(pylogging.Filter):
  """Drops INFO chatter of checkpointing libraries; keeps their warnings."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in _NOISY)
    return record.levelno >= pylogging.WARNING or not noisy


def _fail(message: str, status: int = 2, prefix: str = 'jcc: error: ') -> None:
  print(f'{prefix}{message}', file=sys.stderr, flush=True)
  if distributed.is_multiprocess():
    # The other processes are told and stop too, rather than waiting for
    # this one in a collective.
    distributed.leave(message, status)
  sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with config mistakes reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e}\nSee --helpfull, and configs/default.py for config fields.')
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a field that does not
    # exist (the config is locked).
    bad = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    _fail(f'unknown config field among {", ".join(bad)} ({e}). '
          'configs/default.py lists every field.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(QuietLibraries())
  try:
    if _MODE.value == 'train':
      workflows.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == 'evaluate':
      workflows.evaluate_workdir(_CONFIG.value, _WORKDIR.value)
    else:
      workflows.predict_workdir(_CONFIG.value, _WORKDIR.value)
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
