"""Devices: the mesh, shardings and global arrays, and on a CPU one device
per core.

One 1-D mesh over every device of every process, with the batch on axis
'data', the dataset-sized tables (DEC's target) split by rows on the same
axis, and everything else replicated.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np

from jcc.errors import ConfigError


def check_platforms() -> None:
  """Raises ConfigError where JAX cannot start the platforms JAX_PLATFORMS
  names (``cuda`` on a machine without a GPU or without jax's CUDA
  plugin, ``tpu`` without a TPU): one line, before any data is read."""
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:
    platforms = os.environ.get('JAX_PLATFORMS', '')
    if not platforms:
      raise
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else (
        'no backend for it')
    raise ConfigError(
        f'JAX_PLATFORMS={platforms}: JAX cannot use it on this machine '
        f'({detail}). Unset JAX_PLATFORMS to use what is here, or install '
        'jax for that platform.') from None


# The most CPU devices a run makes by itself: one per core was measured on 2
# cores only (benchmarks/cpu_devices.py), and each device's share of the
# batch shrinks with their number.
MAX_DEFAULT_CPU_DEVICES = 8


def available_cores() -> int:
  """The cores this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def default_cpu_device_count(batch_size: int | None, cores: int) -> int:
  """One CPU device per core, at most MAX_DEFAULT_CPU_DEVICES, and no more
  than divide ``batch_size`` evenly (None: any number will do)."""
  return max(n for n in range(1, min(cores, MAX_DEFAULT_CPU_DEVICES) + 1)
             if batch_size is None or batch_size % n == 0)


def cpu_device_count_chosen() -> bool:
  """Whether the user chose the number of CPU devices (JAX_NUM_CPU_DEVICES,
  jax_num_cpu_devices or XLA's --xla_force_host_platform_device_count)."""
  return (jax.config.jax_num_cpu_devices >= 0 or
          '--xla_force_host_platform_device_count' in
          os.environ.get('XLA_FLAGS', ''))


def use_one_cpu_device_per_core(batch_size: int | None = None) -> int | None:
  """Makes JAX's CPU one device per core (``default_cpu_device_count``);
  returns that number, or None where it leaves JAX as it is.

  JAX gives a CPU one device, whose operations share the host's threads;
  jcc's step split over one device per core ran 1.25-1.35x faster on 2
  cores (benchmarks/cpu_devices.py). Left alone: a count the user chose,
  JAX_PLATFORMS without the CPU, a run of several processes (they may share
  a host's cores), and a process whose JAX has already started its devices
  (a count can only be set before).
  """
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if (cpu_device_count_chosen() or jax.distributed.is_initialized() or
      (platforms and 'cpu' not in platforms.split(','))):
    return None
  count = default_cpu_device_count(batch_size, available_cores())
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # JAX's devices already exist in this process
    return None
  return count


def cpu_devices_hint(devices: list[jax.Device], batch_size: int,
                     cores: int | None = None) -> str | None:
  """A line suggesting one CPU device per core, where a run has one for many
  (a process whose JAX started its devices before jcc could choose).

  None where it does not apply: an accelerator, several devices already,
  one core, or a batch that does not divide over the cores.
  ``cores``: default, those this process may run on.
  """
  if cores is None:
    cores = available_cores()
  if (len(devices) != 1 or devices[0].platform != 'cpu' or cores < 2 or
      batch_size % cores):
    return None
  return (f'One CPU device on {cores} cores: JAX_NUM_CPU_DEVICES={cores} '
          'splits each batch over them, often faster (docs/multihost.md, '
          '"On a CPU").')


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all hosts).

  The batch is split on its axis 'data'; parameters are replicated. Under
  ``jax.jit`` this has pmap's semantics on today's API: BatchNorm statistics
  and the contrastive negatives come from the global batch.
  """
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(
      np.asarray(devices), ('data',), axis_types=(AxisType.Auto,))


class Shardings(NamedTuple):
  """The two placements of the data-parallel step."""
  replicated: NamedSharding  # whole on every device: state, scalars
  batch: NamedSharding  # rows split over the mesh axis 'data': batches, P


def shardings(mesh: jax.sharding.Mesh) -> Shardings:
  """The replicated and the row-split sharding of ``mesh``."""
  return Shardings(NamedSharding(mesh, P()), NamedSharding(mesh, P('data')))


def to_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global jax.Array from a host array that every process holds whole.

  Each process fills only its addressable shards, so this works on one host
  and on many (where a plain ``device_put`` would need all devices local).
  """
  return jax.make_array_from_callback(
      array.shape, sharding, lambda index: array[index])


def padded_rows(num_rows: int, mesh: jax.sharding.Mesh) -> int:
  """``num_rows`` rounded up to a multiple of the mesh's devices: the
  length of a table split by rows over them (its last rows unused)."""
  return -(-num_rows // mesh.size) * mesh.size


def row_table(shape: tuple[int, ...], mesh: jax.sharding.Mesh,
              rows: Callable[[slice], np.ndarray]) -> jax.Array:
  """A global array of ``shape`` split by rows over ``mesh`` ('data'),
  each device's rows ``rows(slice)``: no process builds the whole table.
  ``shape[0]`` must be a multiple of the devices (:func:`padded_rows`)."""
  return jax.make_array_from_callback(
      shape, shardings(mesh).batch, lambda index: rows(index[0]))


def set_rows(table: jax.Array, rows: np.ndarray, values: np.ndarray,
             per_process: int, num_chunks: int) -> jax.Array:
  """``table`` (split by rows, donated) with this process's ``rows``
  (indices into it) set to ``values``; every process calls it with its own.

  The rows travel in ``num_chunks`` chunks of ``per_process`` rows from
  each process (the same numbers on every process; short chunks padded
  with rows that are dropped), and each device keeps the rows it holds:
  no device holds more than its share of the table and one chunk.
  """
  sharding = table.sharding
  dropped = table.shape[0]  # out of bounds: .at[].set(mode='drop') skips it
  for chunk in range(num_chunks):
    part = slice(chunk * per_process, (chunk + 1) * per_process)
    index = np.full(per_process, dropped, np.int32)
    value = np.zeros((per_process,) + table.shape[1:], table.dtype)
    index[:len(rows[part])] = rows[part]
    value[:len(rows[part])] = values[part]
    table = _scatter_rows(table, *from_process_local(sharding, index, value))
  return table


def resized_tables(saved: dict[str, tuple[int, ...]], like: dict
                   ) -> dict[str, tuple[int, NamedSharding]]:
  """The arrays of ``like`` that were saved (``saved``: their shapes) with
  another number of rows, padded for another number of devices: each one's
  saved rows, and a sharding to read them with (``like``'s where the rows
  split over its devices, else replicated)."""
  tables = {}
  for name, shape in saved.items():
    table = like[name]
    if (isinstance(table, jax.Array) and shape[1:] == table.shape[1:] and
        shape[0] != table.shape[0]):
      mesh = table.sharding.mesh
      tables[name] = (shape[0], table.sharding if shape[0] % mesh.size == 0
                      else shardings(mesh).replicated)
  return tables


def fit_rows(table: jax.Array, num_rows: int,
             sharding: NamedSharding) -> jax.Array:
  """``table`` cut to its first ``num_rows`` rows, or padded with zeros to
  them, placed by ``sharding``."""
  extra = [(0, max(num_rows - table.shape[0], 0))] + [(0, 0)] * (
      table.ndim - 1)
  return jax.jit(lambda t: jax.numpy.pad(t[:num_rows], extra),
                 out_shardings=sharding)(table)


@functools.partial(jax.jit, donate_argnums=0)
def _scatter_rows(table: jax.Array, rows: jax.Array,
                  values: jax.Array) -> jax.Array:
  # With the table split by rows, XLA sends the chunk to every device and
  # each writes the rows it holds (an all-gather of the chunk alone).
  return table.at[rows].set(values, mode='drop')


def from_process_local(
    sharding: NamedSharding, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """This process's rows of global arrays → global arrays split on 'data'."""
  return tuple(jax.make_array_from_process_local_data(sharding, x)
               for x in arrays)


def fits_in_memory(compiled, batch_size: int, image_size: int):
  """``compiled``, unless it cannot fit in a device's memory (ConfigError).

  XLA's own count of the step's memory (arguments, outputs, temporaries)
  against what each device has: a config that cannot fit is refused in one
  line before it tries to allocate, rather than failing deep in XLA.
  """
  stats = compiled.memory_analysis()
  available = memory_per_device()
  if stats is not None and available is not None:
    needed = (stats.argument_size_in_bytes + stats.output_size_in_bytes -
              stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    if needed > available:
      raise ConfigError(
          f'config.train.batch_size={batch_size} with config.dataset.'
          f'image_size={image_size} needs about {needed / 2**30:.1f} GiB per '
          f'device for a step, more than the {available / 2**30:.1f} GiB '
          'available: lower one of them (or use more devices).')
  return compiled


def memory_per_device() -> int | None:
  """Bytes a computation may use on each local device; None if unknown.

  An accelerator reports its limit; CPU devices share the host's available
  memory (/proc/meminfo's MemAvailable), so each gets its part.
  """
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  try:
    with open('/proc/meminfo') as f:
      available = next(int(line.split()[1]) * 1024 for line in f
                       if line.startswith('MemAvailable:'))
  except (OSError, StopIteration, ValueError):
    return None
  return available // jax.local_device_count()
