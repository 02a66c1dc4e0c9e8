"""Devices: the mesh, shardings and global arrays (and, on a CPU, the hint
to use one device per core).

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


def cpu_devices_hint(devices: list[jax.Device], batch_size: int,
                     cores: int | None = None) -> str | None:
  """A line suggesting one CPU device per core, where a run has one for many.

  JAX gives a CPU one device, whose operations use the host's threads;
  splitting the batch over one device per core made jcc's step 1.25-1.35x
  faster on 2 cores (benchmarks/cpu_devices.py), which a user would not
  guess. None where it does not apply: an accelerator, several devices
  already, one core, or a batch that does not divide over the cores.
  ``cores``: default, those this process may run on.
  """
  if cores is None:
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
             else os.cpu_count() or 1)
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
