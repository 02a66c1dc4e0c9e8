"""The array plumbing the losses share: the compute dtype, replication of
explicitly sharded inputs, sums over a mesh axis, rows normalised and
gathered from every device, and a Gram matrix whose gradient is one matmul.
jcc.losses holds the formulas; this, how they run.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp

Array = jax.Array
AxisName = Hashable | None

# The floor of a norm: far below any real (non-degenerate) row's.
NORM_EPS = 1e-8


def compute_dtype(*xs: Array) -> jnp.dtype:
  """float32, or float64 when an input already is float64."""
  dtype = jnp.result_type(*xs)
  return jnp.promote_types(dtype, jnp.float32)


def replicate_if_explicit(x: Array) -> Array:
  """Replicates an array sharded over mesh axes of type ``Explicit``.

  With explicit sharding, contractions over the batch need their output
  sharding spelled out. Loss inputs are small (B×d, B×K), so gathering them once
  is cheap and lets one formula serve every sharding mode. Arrays on ``Auto``
  meshes, inside ``shard_map`` and unsharded arrays pass through unchanged.
  """
  sharding = jax.typeof(x).sharding
  spec = getattr(sharding, 'spec', None)
  if spec is None or all(axis is None for axis in spec):
    return x
  return jax.sharding.reshard(
      x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))


def upcast(*xs: Array) -> tuple[Array, ...]:
  """Upcasts to the compute dtype (see :func:`compute_dtype`)."""
  dtype = compute_dtype(*xs)
  return tuple(
      replicate_if_explicit(jnp.asarray(x).astype(dtype)) for x in xs)


def psum(x: Array, axis_name: AxisName) -> Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def pmean(x: Array, axis_name: AxisName) -> Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


@jax.custom_jvp
def gram(x: Array) -> Array:
  """x xᵀ, differentiated with one matmul instead of two.

  The tangent of x xᵀ is S + Sᵀ with S = ẋ xᵀ. Stating it so lets reverse mode
  transpose it into a single product (G + Gᵀ) x, where plain autodiff of the
  matmul would form G x and Gᵀ x separately.
  """
  return jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)


@gram.defjvp
def gram_jvp(primals, tangents):
  (x,), (x_dot,) = primals, tangents
  s = jnp.matmul(x_dot, x.T, precision=jax.lax.Precision.HIGHEST)
  return gram(x), s + s.T


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """x / max(‖x‖, eps): a zero vector stays zero with a finite gradient."""
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS**2))


def paired_rows(
    z_a: Array, z_b: Array, names: tuple[str, str], normalized: bool,
    axis_name: AxisName) -> tuple[Array, Array, Array, Array, Array | int]:
  """Two (B, d) batches of projections, checked and L2-normalised, with all
  devices' rows of each and the global index of this device's first row."""
  z_a, z_b = upcast(z_a, z_b)
  if z_a.shape != z_b.shape or z_a.ndim != 2:
    raise ValueError(f'{names[0]} and {names[1]} must both be (B, d); got '
                     f'{z_a.shape} and {z_b.shape}.')
  if not normalized:
    z_a, z_b = l2_normalize(z_a), l2_normalize(z_b)
  if axis_name is None:
    return z_a, z_b, z_a, z_b, 0
  return (z_a, z_b, jax.lax.all_gather(z_a, axis_name, tiled=True),
          jax.lax.all_gather(z_b, axis_name, tiled=True),
          jax.lax.axis_index(axis_name) * z_a.shape[0])
