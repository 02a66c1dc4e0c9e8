"""Devices: the mesh, shardings and global arrays, and on a CPU one device
per core.

One 1-D mesh over every device of every process, with the batch on axis
'data' and everything else replicated.
"""

from __future__ import annotations

import os
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
  replicated: NamedSharding  # whole on every device: state, P, scalars
  batch: NamedSharding  # rows split over the mesh axis 'data'


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
