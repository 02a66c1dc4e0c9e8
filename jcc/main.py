"""Command line: python -m jcc.main --config=configs/digits.py --workdir=DIR.

Flags:
  --config: an ml_collections config file; override fields with
    --config.train.num_epochs=50 and the like.
  --workdir: where checkpoints, results.json and logs go; a run resumes from
    the latest checkpoint found there.
  --mode: train (train, resuming if possible, then evaluate) or evaluate
    (evaluate the latest checkpoint).
"""

import logging as pylogging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jcc import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for this run.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'],
                          'train (and evaluate), or evaluate only.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(pylogging.Filter):
  """Drops INFO chatter of checkpointing libraries; keeps their warnings."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in _NOISY)
    return record.levelno >= pylogging.WARNING or not noisy


_NOISY = ('/orbax/', '/etils/', '/tensorstore/')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if _MODE.value == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    train.evaluate_workdir(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
