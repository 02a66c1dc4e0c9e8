"""jcc's train step as a benchmark runner: one call, one step, blocking."""

from __future__ import annotations

import jax
import numpy as np
import optax

from jcc import models
from jcc import parallel
from jcc import step
from jcc import terms


def step_runner(config, channels: int, devices=None,
                compiler_options: dict[str, str] | None = None):
  """A callable running jcc's joint train step (config's model and batch,
  and each image's neighbour where the config's neighbour terms have a
  weight) once, on ``devices`` (default: all), compiled with
  ``compiler_options`` (default: jcc's, :func:`jcc.conv.compiler_options`).
  ``run.flops`` is XLA's count of the step's floating-point operations, or
  None."""
  k = config.dataset.num_clusters
  mesh = parallel.make_mesh(devices)
  model = models.build_model(config, channels, step.compute_dtype(config))
  tx = optax.adam(config.train.learning_rate)
  shape = (config.dataset.image_size,) * 2 + (channels,)
  state = jax.jit(lambda key: step.create_train_state(model, tx, key, shape),
                  out_shardings=parallel.shardings(mesh).replicated)(
                      jax.random.key(0))
  train_step = step.make_train_step(model, tx, config, mesh,
                                    compiler_options=compiler_options)
  rng = np.random.default_rng(0)
  batch = config.train.batch_size
  images = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
  target = rng.dirichlet(np.ones(k), size=batch).astype(np.float32)
  with_neighbors = terms.uses_neighbors(config)
  placed = jax.tree.map(parallel.to_global, step.Batch(
      images=images, indices=np.arange(batch, dtype=np.int32),
      joint_scale=np.float32(1.0),
      neighbor_images=images[::-1].copy() if with_neighbors else None),
                        step.batch_shardings(mesh, neighbors=with_neighbors))
  args = (parallel.to_global(target, parallel.shardings(mesh).replicated),
          placed)
  holder = {'state': state}

  def run():
    holder['state'], metrics = train_step(holder['state'], *args)
    jax.block_until_ready(metrics)
  run.flops = step_flops(train_step, state, args)
  return run


def step_flops(train_step, state, args) -> float | None:
  """XLA's count of the floating-point operations of one compiled step."""
  try:
    cost = train_step.lower(state, *args).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None
