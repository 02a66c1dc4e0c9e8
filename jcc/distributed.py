"""Several processes as one run: start-up, agreement, and losing a peer.

Every process runs the same command; ``config.distributed`` says how they
find each other (:func:`initialize`). Then:

* they check that they run the same config and the same code
  (:func:`check_same_run`), before any training step;
* decisions that one process could take alone, such as stopping on a
  signal, are taken together (:func:`any_process`), and host-side results
  that must be identical, such as k-means centroids, come from statistics
  summed over processes in one order everywhere
  (:func:`sum_over_processes`);
* a :class:`PeerWatch` thread publishes this process's heartbeat in the
  coordination service's key-value store and ends the process, with one line,
  when a peer stops beating or leaves with an error: a collective would
  otherwise wait for the lost peer for ever.

The watch cannot cover the loss of process 0 itself: the coordination service
lives in it, and JAX's runtime then ends every other process at once with its
own fatal message (its Python hook for this fails in jax 0.10).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import socket
import sys
import threading
import time
from typing import NoReturn

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from jcc.errors import ConfigError

# EX_TEMPFAIL: nothing is wrong with the command; run it again on every host
# and it resumes from the last complete checkpoint.
EXIT_PEER_LOST = 75
# Seconds between heartbeats; a peer is lost after
# config.distributed.peer_timeout_seconds without one.
HEARTBEAT_SECONDS = 1.0
# Fields that may differ between the processes of one run.
PER_PROCESS_FIELDS = ('distributed.process_id',
                      'distributed.coordinator_address')
_KEY = 'jcc/heartbeat/'

_watch: PeerWatch | None = None


def is_requested(config: ml_collections.ConfigDict) -> bool:
  """Whether this config (or JAX_COORDINATOR_ADDRESS) asks for several processes."""
  d = config.distributed
  return bool(d.coordinator_address or d.num_processes != -1 or
              d.process_id != -1 or os.environ.get('JAX_COORDINATOR_ADDRESS'))


def initialize_arguments(config: ml_collections.ConfigDict) -> dict:
  """``jax.distributed.initialize``'s arguments; unset ones JAX detects."""
  d = config.distributed
  arguments = {
      'initialization_timeout': d.initialization_timeout_seconds,
      # JAX's own heartbeat is a backstop behind PeerWatch, which reports a
      # lost peer in one line and so must notice first.
      'heartbeat_timeout_seconds': 2 * d.peer_timeout_seconds + 10,
  }
  if d.coordinator_address not in ('', 'auto'):
    arguments['coordinator_address'] = d.coordinator_address
  if d.num_processes != -1:
    arguments['num_processes'] = d.num_processes
  if d.process_id != -1:
    arguments['process_id'] = d.process_id
  return arguments


def initialize(config: ml_collections.ConfigDict) -> None:
  """Joins the other processes when the config asks for it; else nothing.

  Must run before anything touches a device. Selects the gloo collectives,
  which CPU devices of several processes need (harmless on accelerators).
  Processes other than 0 log warnings only.
  """
  if not is_requested(config) or jax.distributed.is_initialized():
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # JAX's preemption service would catch SIGTERM outside training and do
  # nothing with it; the Trainer agrees on stops itself (any_process).
  with contextlib.suppress(AttributeError):  # an option of jax <= 0.11
    jax.config.update('jax_enable_preemption_service', False)
  if config.distributed.process_id > 0:
    logging.set_verbosity(logging.WARNING)
  arguments = initialize_arguments(config)
  if arguments.get('process_id', 0) > 0 and 'coordinator_address' in arguments:
    # JAX would end the process with a fatal error after its timeout.
    _wait_for_coordinator(arguments['coordinator_address'],
                          config.distributed.initialization_timeout_seconds)
  try:
    jax.distributed.initialize(**arguments)
  except (ValueError, RuntimeError) as e:
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip('.')
    raise ConfigError(
        'could not join the other processes of this run '
        f'(config.distributed: {_describe(config)}): {detail}. Start the '
        'same command on every host within '
        f'{config.distributed.initialization_timeout_seconds} s, with '
        'coordinator_address=HOST:PORT of process 0, num_processes and '
        'each its own process_id, or coordinator_address=auto under SLURM, '
        'Open MPI or on a TPU pod.') from None
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('Process %d of %d, %d local devices of %d.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  global _watch
  client = _key_value_store()
  if client is None:
    logging.warning('This JAX has no key-value store where jcc looks for it: '
                    'a lost peer is detected by JAX alone (its own message, '
                    'after %d s).', arguments['heartbeat_timeout_seconds'])
    return
  _watch = PeerWatch(client, config.distributed.peer_timeout_seconds)
  _watch.start()


def _key_value_store():
  """JAX's distributed client (it has no public accessor; orbax reads it
  the same way), or None if this version keeps it elsewhere."""
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    return jax_distributed.global_state.client
  except (ImportError, AttributeError):
    return None


def _wait_for_coordinator(address: str, timeout: float) -> None:
  """Waits until HOST:PORT accepts connections; ConfigError after ``timeout``."""
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host.strip('[]'), int(port)), timeout=1).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise ConfigError(
            f'nothing answers at config.distributed.coordinator_address='
            f'{address} after {timeout:g} s ({e.strerror or e}): start '
            'process 0 (process_id=0) on that host, or correct the address '
            '(config.distributed.initialization_timeout_seconds sets the '
            'wait).') from None
      time.sleep(0.5)


def _describe(config: ml_collections.ConfigDict) -> str:
  d = config.distributed
  return (f'coordinator_address={d.coordinator_address!r}, '
          f'num_processes={d.num_processes}, process_id={d.process_id}')


def writes_shared_files() -> bool:
  """Whether this process writes the workdir's shared files: results.json,
  the report, predictions, the metric logs, model.json and config.json, and
  holds the lock. Process 0 of a run; every process writes its own part of
  each checkpoint (orbax)."""
  return jax.process_index() == 0


def is_multiprocess() -> bool:
  return jax.distributed.is_initialized() and jax.process_count() > 1


def fingerprint(config: ml_collections.ConfigDict,
                data_shape: tuple[int, ...] = (),
                package: pathlib.Path | None = None) -> bytes:
  """SHA-256 of what must be equal on every process: config, data, code, JAX.

  The config without its per-process fields, the shape of the loaded images
  (a host whose copy of the data differs), the source of the jcc package
  (``package``, default: this one) and the JAX version.
  """
  values = config.to_dict()
  for field in PER_PROCESS_FIELDS:
    group, name = field.split('.')
    values.get(group, {}).pop(name, None)
  digest = hashlib.sha256()
  digest.update(json.dumps(values, sort_keys=True, default=str).encode())
  digest.update(repr(tuple(data_shape)).encode())
  package = package or pathlib.Path(__file__).parent
  for path in sorted(package.rglob('*.py')):
    digest.update(str(path.relative_to(package)).encode())
    digest.update(path.read_bytes())
  digest.update(jax.__version__.encode())
  return digest.digest()


def check_same_run(config: ml_collections.ConfigDict,
                   data_shape: tuple[int, ...]) -> None:
  """Raises ConfigError on every process unless all run the same thing.

  A process with another config, data or code version would compile other
  programs, and the collectives of the two would wait for each other for
  ever (or mix unrelated data). ``data_shape``: the loaded images' shape.
  """
  if not is_multiprocess():
    return
  mine = np.frombuffer(fingerprint(config, data_shape), np.uint8)
  everyone = np.asarray(multihost_utils.process_allgather(mine))
  differ = [i for i in range(len(everyone))
            if not np.array_equal(everyone[i], everyone[0])]
  if differ:
    raise ConfigError(
        f'process{"es" if len(differ) > 1 else ""} '
        f'{", ".join(map(str, differ))} of {len(everyone)} '
        f'run{"" if len(differ) > 1 else "s"} another config, '
        'other data or another version of jcc or JAX than process 0 (only '
        f'{" and ".join(PER_PROCESS_FIELDS)} may differ). Start every '
        'process with the same command and the same installation.')


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is True on any process; every process must call it."""
  if not is_multiprocess():
    return flag
  gathered = multihost_utils.process_allgather(np.asarray([flag]))
  return bool(np.asarray(gathered).any())


def sum_over_processes(array: np.ndarray) -> np.ndarray:
  """The sum of ``array`` over all processes, the same bits on each (every
  process must call it, with the same shape and dtype).

  The processes' arrays travel as raw bytes, so float64 stays float64, and
  are added in process order everywhere."""
  if not is_multiprocess():
    return array
  array = np.ascontiguousarray(array)
  gathered = np.asarray(multihost_utils.process_allgather(
      array.reshape(-1).view(np.uint8)))
  parts = gathered.reshape(jax.process_count(), -1).view(array.dtype)
  total = parts[0].copy()
  for part in parts[1:]:
    total += part
  return total.reshape(array.shape)


def rows_at(chosen: np.ndarray, own: np.ndarray, own_rows: np.ndarray,
            sum_over=None) -> np.ndarray:
  """The rows of global indices ``chosen`` (increasing), in that order, on
  every process, from each process's ``own`` rows, whose global indices are
  ``own_rows``: each process fills those it holds and the sum over
  processes (``sum_over``, default :func:`sum_over_processes`) completes
  them, exactly, the others adding zeros."""
  part = np.zeros((len(chosen),) + own.shape[1:], own.dtype)
  if len(chosen):
    position = np.searchsorted(chosen, own_rows)
    held = (position < len(chosen)) & (
        chosen[np.minimum(position, len(chosen) - 1)] == own_rows)
    part[position[held]] = own[held]
  return (sum_over or sum_over_processes)(part)


def wait_for_all(name: str) -> None:
  """Returns when every process has made the same call (at once alone)."""
  if is_multiprocess():
    multihost_utils.sync_global_devices(name)


class PeerWatch(threading.Thread):
  """Heartbeats through the coordination service; ends the process when a
  peer is lost.

  Each beat writes a counter under ``jcc/heartbeat/<process>`` and reads
  every peer's. A peer whose counter has not moved for ``timeout`` seconds,
  or which wrote that it left, is lost: this process prints one line and
  exits with EXIT_PEER_LOST, as it cannot go on without the peer.
  """

  def __init__(self, client, timeout: float):
    super().__init__(name='jcc-peer-watch', daemon=True)
    self._client = client
    self._me = jax.process_index()
    self._count = jax.process_count()
    self.timeout = timeout
    self._left = threading.Event()

  def _publish(self, value: str) -> None:
    self._client.key_value_set(f'{_KEY}{self._me}', value,
                               allow_overwrite=True)

  def run(self) -> None:
    seen: dict[int, tuple[str, float]] = {}
    start = time.monotonic()
    beat = 0
    while not self._left.is_set():
      lost = self._check(beat, seen, start)
      if lost and not self._left.is_set():  # not while leaving on its own
        exit_peer_lost(lost)
      beat += 1
      self._left.wait(HEARTBEAT_SECONDS)

  def _check(self, beat: int, seen: dict[int, tuple[str, float]],
             start: float) -> str | None:
    """Beats once; what was lost, if a peer was."""
    try:
      self._publish(str(beat))
      beats = dict(self._client.key_value_dir_get(_KEY))
    except Exception as e:  # pylint: disable=broad-except
      return ('the coordination service of process 0 cannot be reached '
              f'({str(e).splitlines()[0][:120]})')
    now = time.monotonic()
    for peer in range(self._count):
      value = beats.get(f'{_KEY}{peer}')
      if peer == self._me or value == 'done':
        continue  # a finished peer waits in JAX's shutdown
      if value is not None and value.startswith('left:'):
        return f'process {peer} stopped ({value[5:].strip()})'
      if value is not None and seen.get(peer, (None,))[0] != value:
        seen[peer] = (value, now)
      if now - seen.get(peer, (None, start))[1] > self.timeout:
        return (f'process {peer} sent no heartbeat for {self.timeout:g} s '
                '(config.distributed.peer_timeout_seconds)')
    return None

  def leave(self, reason: str | None) -> None:
    """Stops beating and tells the peers why this process leaves.

    ``reason`` None: the run ended on every process, nobody is lost.
    """
    self._left.set()
    self.join(timeout=10)
    try:
      self._publish('done' if reason is None else f'left: {reason}')
    except Exception:  # pylint: disable=broad-except
      pass  # the service is gone: the peers learn it from JAX


# How the collectives report a peer that went away (gloo on CPU, NCCL).
_PEER_FAILURES = ('connection reset', 'connection closed', 'broken pipe',
                  'remote process exited', 'socket closed')


def is_peer_failure(error: BaseException) -> bool:
  """Whether ``error`` is a collective failing because a peer went away."""
  return isinstance(error, jax.errors.JaxRuntimeError) and any(
      part in str(error).lower() for part in _PEER_FAILURES)


def exit_peer_lost(what: str) -> NoReturn:
  """One line on stderr, then exit EXIT_PEER_LOST at once."""
  print(f'jcc: error: lost a peer: {what}; stopping this process too. Run '
        'the same command on every host again: it resumes from the last '
        'complete checkpoint.', file=sys.stderr, flush=True)
  os._exit(EXIT_PEER_LOST)  # the main thread may be waiting in a collective


def leave(reason: str, status: int) -> NoReturn:
  """Ends this process alone (an error, or a stop the others did not share).

  The peers are told, so that they stop at once rather than after the
  heartbeat timeout. Process 0 waits a little first, since the coordination
  service ends with it. Exits without JAX's shutdown barrier, which would
  wait for peers that are still in a collective.
  """
  if _watch is not None:
    _watch.leave(reason)
    if jax.process_index() == 0:
      time.sleep(3 * HEARTBEAT_SECONDS)
  sys.stdout.flush()
  sys.stderr.flush()
  logging.flush()
  os._exit(status)


def finish() -> None:
  """Ends a multi-process run that ended well on every process.

  JAX's shutdown waits until every process has reached it.
  """
  if _watch is not None:
    _watch.leave(None)
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()
