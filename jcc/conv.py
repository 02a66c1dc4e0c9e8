"""The convolution of jcc's models: lax's, or one matmul on tiny images.

On XLA:CPU a 3×3 convolution of a 2×2 feature map ran 15-20× slower than
the same arithmetic as one matmul, forward and backward; in configs/digits.py
(8×8 images, 2×2 after two strides) that one layer took half the train step
(benchmarks/conv_grad.py, benchmarks/notes/speed.md). At 3×3 the matmul was
still 1.8-2.5× faster, at 4×4 the two were level. Where the feature map has
at most MAX_DENSE_POSITIONS positions, :func:`conv_general_dilated` therefore
computes the stride-1 convolution as one matmul of the flattened image with
a (H·W·C_in, H'·W'·C_out) matrix gathered from the kernel; elsewhere, and off
the CPU, it is lax's. The parameters are flax's ``nn.Conv`` kernel either way.

:func:`compiler_options` are the XLA options of the train step and the
forward pass: on a CPU they keep convolutions out of XLA's YNNPACK fusions,
which ran them slower than XLA's own convolutions.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

# The largest feature map (H·W positions) computed as a matmul, and the
# largest matrix (elements): the matrix is H·W·H'·W'/(kh·kw) times the
# kernel. Measured (batch 512, 3×3 kernels): 1×1, 2×2 and 3×3 maps win
# 1.8-20×, 4×4 is level; the largest matrix measured had 576² elements.
MAX_DENSE_POSITIONS = 9
MAX_DENSE_MATRIX = 2**20

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# XLA:CPU hands convolutions, matmuls, reductions and elementwise ops to
# YNNPACK by default (jaxlib 0.10), whose convolutions, filter gradients most
# of all, ran slower than XLA's own. With only reductions and single matmuls
# in YNNPACK (its other kinds take convolutions along), the train step ran
# 1.1x (ResNet-18) and 1.2-1.5x (ConvNet) as fast on 2 CPU devices
# (benchmarks/train_step.py --compare-xla-default; benchmarks/notes/speed.md).
_YNN_FUSION_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
CPU_COMPILER_OPTIONS = {
    _YNN_FUSION_FLAG:
        'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, **kwargs):
  """``lax.conv_general_dilated``, as one matmul where :func:`use_dense`.

  Takes what flax's ``nn.Conv`` passes (its ``conv_general_dilated``).
  """
  lax_conv = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)
  plain = (all(s == 1 for s in window_strides) and
           all(d == 1 for d in lhs_dilation or (1,)) and
           all(d == 1 for d in rhs_dilation or (1,)) and
           feature_group_count == 1 and not kwargs and lhs.ndim == 4)
  if not plain or not use_dense(lhs.shape[1:3], rhs.shape) or (
      dimension_numbers is not None and
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) !=
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
    return lax_conv()
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1),
                                  padding)
  return dense_conv(lhs, rhs, tuple(tuple(p) for p in padding), precision)


def use_dense(spatial: Sequence[int], kernel_shape: Sequence[int]) -> bool:
  """Whether a stride-1 convolution of an H×W map by an HWIO kernel runs as
  a matmul: on a CPU, with at most MAX_DENSE_POSITIONS positions and a
  matrix of at most MAX_DENSE_MATRIX elements (the output taken as H×W)."""
  positions = int(np.prod(spatial))
  matrix = positions**2 * kernel_shape[2] * kernel_shape[3]
  return (positions <= MAX_DENSE_POSITIONS and matrix <= MAX_DENSE_MATRIX
          and jax.default_backend() == 'cpu')


def dense_conv(x: jax.Array, kernel: jax.Array,
               padding: tuple[tuple[int, int], ...], precision=None
               ) -> jax.Array:
  """A stride-1 NHWC/HWIO convolution as one matmul.

  Output position p and input position q meet through the kernel tap
  q − p + pad_low (per axis) where that lies inside the kernel, else not at
  all: the matmul's matrix is the kernel's taps gathered by that rule, with
  zeros elsewhere.
  """
  n, h, w, c = x.shape
  kh, kw, _, o = kernel.shape
  (top, bottom), (left, right) = padding
  ho, wo = h + top + bottom - kh + 1, w + left + right - kw + 1
  qy, qx, py, px = np.meshgrid(np.arange(h), np.arange(w), np.arange(ho),
                               np.arange(wo), indexing='ij')
  i, j = qy - py + top, qx - px + left
  inside = (i >= 0) & (i < kh) & (j >= 0) & (j < kw)
  taps = np.where(inside, i * kw + j, kh * kw)  # kh·kw: the zero tap
  padded = jnp.concatenate([kernel.reshape(kh * kw, c, o),
                            jnp.zeros((1, c, o), kernel.dtype)])
  matrix = padded[taps.reshape(h * w, ho * wo)]  # (q, p, c, o)
  matrix = matrix.transpose(0, 2, 1, 3).reshape(h * w * c, ho * wo * o)
  y = jnp.matmul(x.reshape(n, h * w * c), matrix, precision=precision)
  return y.reshape(n, ho, wo, o)


def compiler_options() -> dict[str, str]:
  """XLA options for the train step's and forward pass's ``jax.jit``:
  CPU_COMPILER_OPTIONS on a CPU backend whose XLA takes them, else none. A
  YNNPACK setting of the user's own in XLA_FLAGS is left to rule."""
  if (jax.default_backend() != 'cpu' or
      _YNN_FUSION_FLAG in os.environ.get('XLA_FLAGS', '')):
    return {}
  return dict(_cpu_options_accepted())


@functools.cache
def _cpu_options_accepted() -> tuple[tuple[str, str], ...]:
  """CPU_COMPILER_OPTIONS if this jaxlib's XLA:CPU compiles with them (one
  tiny compile per process); () where it rejects them, as an XLA without
  YNNPACK or with other fusion names does."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
        jax.ShapeDtypeStruct((), jnp.float32)).compile()
  except Exception:  # pylint: disable=broad-except  # XLA's error types vary
    return ()
  return tuple(CPU_COMPILER_OPTIONS.items())
