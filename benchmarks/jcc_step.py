"""jcc's train step as a benchmark runner: one call, one step, blocking."""

from __future__ import annotations

import jax
import numpy as np
import optax

from jcc import models
from jcc import train


def step_runner(config, channels: int):
  """A callable running jcc's train step (config's model and batch) once."""
  k = config.dataset.num_clusters
  mesh = train.make_mesh()
  model = models.build_model(config, channels, train.compute_dtype(config))
  tx = optax.adam(config.train.learning_rate)
  shape = (config.dataset.image_size,) * 2 + (channels,)
  state = jax.jit(lambda key: train.create_train_state(model, tx, key, shape),
                  out_shardings=train.NamedSharding(mesh, train.P()))(
                      jax.random.key(0))
  step = train.make_train_step(model, tx, config, mesh)
  rng = np.random.default_rng(0)
  batch = config.train.batch_size
  images = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
  target = rng.dirichlet(np.ones(k), size=batch).astype(np.float32)
  rep = train.NamedSharding(mesh, train.P())
  shard = train.NamedSharding(mesh, train.P('data'))
  args = (train.to_global(target, rep), train.to_global(images, shard),
          train.to_global(np.arange(batch, dtype=np.int32), shard),
          np.float32(1.0))
  holder = {'state': state}

  def run():
    holder['state'], metrics = step(holder['state'], *args)
    jax.block_until_ready(metrics)
  run.flops = step_flops(step, state, args)
  return run


def step_flops(step, state, args) -> float | None:
  """XLA's count of the floating-point operations of one compiled step."""
  try:
    cost = step.lower(state, *args).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None
