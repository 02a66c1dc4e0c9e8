"""Metric logs: TensorBoard where it is installed, metrics.jsonl always."""

import errno
import json
import sys
import threading

import pytest

from jcc import errors
from jcc import metric_writer
from jcc import workflows
from tests.conftest import tiny_config


def _jsonl(workdir):
  return [json.loads(line) for line in
          (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_with_tensorboard_both_logs_hold_the_scalars(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write_scalars(3, {'loss/total': 1.5})
  writer.close()
  events = event_accumulator.EventAccumulator(
      str(tmp_path / 'tensorboard'), size_guidance={'tensors': 0})
  events.Reload()
  assert [e.step for e in events.Tensors('loss/total')] == [3]
  assert [(l['step'], l['loss/total']) for l in _jsonl(tmp_path)] == [(3, 1.5)]


def _thread_errors_printed(monkeypatch) -> list:
  """The exceptions that reach the hook that prints a thread's traceback,
  with the command line's filter in front of it."""
  printed = []
  monkeypatch.setattr(threading, 'excepthook',
                      lambda args: printed.append(args.exc_value))
  errors.quiet_disk_full_in_threads()
  return printed


def test_a_full_disk_under_tensorboard_prints_no_thread_traceback(
    tmp_path, monkeypatch):
  # tensorboard's writer thread dies printing its traceback; the command
  # line's one line about the full disk must be all the user reads.
  printed = _thread_errors_printed(monkeypatch)
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write_scalars(1, {'loss/total': 1.0})
  events, = (tmp_path / 'tensorboard').iterdir()
  events.unlink()
  events.symlink_to('/dev/full')  # every write: ENOSPC
  with pytest.raises(OSError) as raised:
    writer.write_scalars(2, {'loss/total': 1.0})
  assert raised.value.errno == errno.ENOSPC
  for thread in threading.enumerate():
    if type(thread).__name__ == '_AsyncWriterThread':
      thread.join(timeout=10)
  assert not printed
  writer.close()


def test_other_errors_in_threads_are_still_printed(monkeypatch):
  printed = _thread_errors_printed(monkeypatch)

  def fail():
    raise RuntimeError('a bug')

  thread = threading.Thread(target=fail)
  thread.start()
  thread.join()
  assert [str(e) for e in printed] == ['a bug']


def _without_tensorboard(monkeypatch):
  # A None entry makes `import tensorboard` raise ImportError, as on an
  # install without the package.
  monkeypatch.setitem(sys.modules, 'tensorboard', None)
  assert not metric_writer.tensorboard_installed()


def test_without_tensorboard_it_warns_and_writes_jsonl(
    tmp_path, monkeypatch, caplog):
  _without_tensorboard(monkeypatch)
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write_scalars(1, {'loss/total': 2.0})
  writer.write_scalars(2, {'loss/total': 1.0})
  writer.close()
  warnings = [r for r in caplog.records if 'TensorBoard' in r.getMessage()]
  assert len(warnings) == 1 and 'pip install tensorboard' in (
      warnings[0].getMessage())
  assert not (tmp_path / 'tensorboard').exists()
  assert [l['step'] for l in _jsonl(tmp_path)] == [1, 2]


def test_a_run_without_tensorboard_finishes(tmp_path, monkeypatch):
  # Without tensorboard the first progress line's metric write must not
  # raise and end the run.
  _without_tensorboard(monkeypatch)
  results = workflows.train_and_evaluate(tiny_config(), str(tmp_path)).results
  assert results['cluster_head']['acc'] > 0
  written = json.loads((tmp_path / 'results.json').read_text())
  # The share of confident predictions self-labelling would take, and ACC.
  assert written['confident'] == results['confident']
  assert written['confident']['threshold'] == 0.99
  assert 0 <= written['confident']['fraction'] <= 1
  steps = [l['step'] for l in _jsonl(tmp_path)]
  assert steps and steps[-1] == 14
