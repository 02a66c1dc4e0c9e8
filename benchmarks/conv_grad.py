"""A convolution backward by per-tap matmuls against XLA's, per layer shape.

Run from the repository root:

  JAX_PLATFORMS=cpu python -m benchmarks.conv_grad

XLA:CPU's convolution filter gradient is far slower than its forward on some
machines and shapes (../shared/probes/conv_filter_grad.py). :func:`conv` here
has lax's forward (NHWC images, HWIO kernels) and a custom VJP:

* the filter gradient as one matmul per kernel tap: dW[i, j] = sum over
  (n, h, w) of x_padded[n, s*h + i, s*w + j, :]^T g[n, h, w, :];
* the input gradient as a stride-1 convolution of the output gradient,
  spread to the stride by an explicit ``lax.pad`` (interior padding, no
  ``lhs_dilation``), with the kernel flipped and its channels swapped.

Both equal lax's gradients within float32 rounding (tests/test_benchmarks.py).
For each convolution of the ResNet-18 (32 px, batch 64), the ConvNet (28 px,
batch 256) and the digits ConvNet (8 px, batch 256) it prints the forward
time, the backward (both gradients) by XLA's own VJP and by :func:`conv`'s,
the best of --rounds after a warm-up, and their largest relative difference.
Ratio = XLA's backward time / conv's (> 1: the taps are faster). With
--torch, two more columns: PyTorch's forward and backward of the same layer
(channels-last, no bias, the same threads), its ratio = PyTorch's forward +
backward time / XLA's.

Every function is compiled with jcc's XLA options
(:func:`jcc.conv.compiler_options`), as jcc's models are, or with XLA's
defaults where --xla-options=default.

A second table times jcc's own rule for tiny feature maps (jcc/conv.py):
stride-1 3×3 convolutions of 1×1 to 4×4 maps, batch 512 (two views of 256),
forward and backward by lax and as one matmul (``jcc.conv.dense_conv``);
ratio = lax's forward+backward time / the matmul's.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
from jax import lax

from jcc import conv as jcc_conv  # pylint: disable=g-import-not-at-top

Array = jax.Array
NHWC = ('NHWC', 'HWIO', 'NHWC')


def _explicit_padding(padding, kernel: Sequence[int], strides: Sequence[int],
                      size: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """``padding`` ('SAME', 'VALID' or pairs) as (low, high) pairs."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(size, kernel, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _forward(x: Array, w: Array, strides: tuple[int, int],
             padding: tuple[tuple[int, int], ...]) -> Array:
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: Array, w: Array, strides: tuple[int, int],
          padding: tuple[tuple[int, int], ...]) -> Array:
  return _forward(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
  return _forward(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, g):
  x, w = residuals
  kh, kw, c_in, c_out = w.shape
  (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
  _, height, width, _ = x.shape
  _, out_h, out_w, _ = g.shape
  g = g.astype(x.dtype)
  padded = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  rows = g.reshape(-1, c_out)
  taps = [
      lax.slice(padded, (0, i, j, 0),
                (padded.shape[0], i + sh * (out_h - 1) + 1,
                 j + sw * (out_w - 1) + 1, c_in),
                (1, sh, sw, 1)).reshape(-1, c_in).T @ rows
      for i in range(kh) for j in range(kw)]
  dw = jnp.stack(taps).reshape(kh, kw, c_in, c_out).astype(w.dtype)
  # The padded input's gradient: the full correlation of the output
  # gradient (spread to the stride) with the flipped kernel; rows and
  # columns of the padded input that no window reached get zeros.
  extra_h = padded.shape[1] - (sh * (out_h - 1) + kh)
  extra_w = padded.shape[2] - (sw * (out_w - 1) + kw)
  spread = lax.pad(g, jnp.zeros((), g.dtype),
                   ((0, 0, 0), (kh - 1, kh - 1 + extra_h, sh - 1),
                    (kw - 1, kw - 1 + extra_w, sw - 1), (0, 0, 0)))
  flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  d_padded = lax.conv_general_dilated(spread, flipped, (1, 1), 'VALID',
                                      dimension_numbers=NHWC)
  dx = d_padded[:, pt:pt + height, pl:pl + width, :]
  return dx.astype(x.dtype), dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(x: Array, w: Array, strides: Sequence[int] = (1, 1),
         padding='SAME') -> Array:
  """``lax.conv_general_dilated(x, w, strides, padding)`` for NHWC ``x`` and
  HWIO ``w``, with the gradients described in the module's docstring.

  ``padding``: 'SAME', 'VALID' or ((top, bottom), (left, right)), each
  at least 0.
  """
  strides = tuple(int(s) for s in strides)
  pads = _explicit_padding(padding, w.shape[:2], strides, x.shape[1:3])
  if any(p < 0 for pair in pads for p in pair):
    raise ValueError(f'conv: negative padding {pads} is not supported.')
  return _conv(x, w, strides, pads)


# (model, batch, size, in, out, kernel, stride): every distinct layer.
LAYERS = [
    ('resnet18 32px', 64, 32, 3, 64, 3, 1),
    ('resnet18 32px', 64, 32, 64, 64, 3, 1),
    ('resnet18 32px', 64, 32, 64, 128, 3, 2),
    ('resnet18 32px', 64, 32, 64, 128, 1, 2),
    ('resnet18 32px', 64, 16, 128, 128, 3, 1),
    ('resnet18 32px', 64, 16, 128, 256, 3, 2),
    ('resnet18 32px', 64, 8, 256, 256, 3, 1),
    ('resnet18 32px', 64, 8, 256, 512, 3, 2),
    ('resnet18 32px', 64, 4, 512, 512, 3, 1),
    ('convnet 28px', 256, 28, 1, 32, 3, 1),
    ('convnet 28px', 256, 28, 32, 32, 3, 1),
    ('convnet 28px', 256, 28, 32, 64, 3, 2),
    ('convnet 28px', 256, 14, 64, 64, 3, 1),
    ('convnet 28px', 256, 14, 64, 128, 3, 2),
    ('convnet 28px', 256, 7, 128, 128, 3, 1),
    ('digits 8px', 256, 8, 1, 16, 3, 1),
    ('digits 8px', 256, 8, 16, 16, 3, 1),
    ('digits 8px', 256, 8, 16, 32, 3, 2),
    ('digits 8px', 256, 4, 32, 32, 3, 1),
    ('digits 8px', 256, 4, 32, 64, 3, 2),
    ('digits 8px', 256, 2, 64, 64, 3, 1),
]


def best_ms(f, *args, rounds: int = 5) -> float:
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return min(times) * 1e3


def relative_difference(a, b) -> float:
  """The largest |a - b| over the largest |a|, over the leaves of a and b."""
  return max(float(jnp.abs(x - y).max() / jnp.abs(x).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def measure(batch, size, c_in, c_out, kernel, stride, rounds,
            options: dict[str, str] | None = None):
  """(forward ms, XLA's backward ms, the taps' backward ms, difference),
  compiled with the XLA ``options`` (None: jcc's)."""
  jit = functools.partial(jax.jit, compiler_options=_options(options))
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, c_in))
  w = 0.1 * jax.random.normal(keys[1], (kernel, kernel, c_in, c_out))

  def by_lax(x, w):
    return lax.conv_general_dilated(x, w, (stride,) * 2, 'SAME',
                                    dimension_numbers=NHWC)

  def by_taps(x, w):
    return conv(x, w, (stride,) * 2, 'SAME')

  g = jax.random.normal(keys[2], by_lax(x, w).shape)

  def backward(f):
    return jit(lambda x, w, g: jax.vjp(f, x, w)[1](g))

  xla, taps = backward(by_lax), backward(by_taps)
  return (best_ms(jit(by_lax), x, w, rounds=rounds),
          best_ms(xla, x, w, g, rounds=rounds),
          best_ms(taps, x, w, g, rounds=rounds),
          relative_difference(xla(x, w, g), taps(x, w, g)))


def _options(options: dict[str, str] | None) -> dict[str, str]:
  return jcc_conv.compiler_options() if options is None else options


def measure_torch(batch, size, c_in, c_out, kernel, stride, rounds):
  """PyTorch's (forward ms, backward ms) of the layer: channels-last, no
  bias, 'SAME'-sized output; backward = forward+backward − forward."""
  from benchmarks import require_torch  # pylint: disable=g-import-not-at-top
  torch = require_torch()
  torch.manual_seed(0)
  layer = torch.nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2,
                          bias=False).to(memory_format=torch.channels_last)
  x = torch.randn(batch, c_in, size, size).contiguous(
      memory_format=torch.channels_last).requires_grad_(True)
  g = torch.randn_like(layer(x))

  def forward():
    with torch.no_grad():
      layer(x)

  def forward_backward():
    layer(x).backward(g)

  def best(f):
    f()
    times = []
    for _ in range(rounds):
      start = time.perf_counter()
      f()
      times.append(time.perf_counter() - start)
    return min(times) * 1e3

  forward_ms = best(forward)
  return forward_ms, max(best(forward_backward) - forward_ms, 0.0)


# (size, channels): 3×3 stride-1 convolutions of tiny maps, batch 512.
TINY_MAPS = [(1, 64), (2, 64), (2, 128), (3, 32), (3, 64), (4, 32)]


def measure_dense(size: int, channels: int, rounds: int,
                  options: dict[str, str] | None = None):
  """(lax forward, lax backward, matmul forward, matmul backward) in ms, and
  the largest relative difference of the outputs and gradients."""
  jit = functools.partial(jax.jit, compiler_options=_options(options))
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (512, size, size, channels))
  w = 0.1 * jax.random.normal(keys[1], (3, 3, channels, channels))
  pads = _explicit_padding('SAME', (3, 3), (1, 1), (size, size))

  def by_lax(x, w):
    return _forward(x, w, (1, 1), pads)

  def by_matmul(x, w):
    return jcc_conv.dense_conv(x, w, pads)

  g = jax.random.normal(keys[2], by_lax(x, w).shape)
  times, results = [], []
  for f in (by_lax, by_matmul):
    forward = jit(f)
    backward = jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g))
    times += [best_ms(forward, x, w, rounds=rounds),
              best_ms(backward, x, w, g, rounds=rounds)]
    results.append((forward(x, w), backward(x, w, g)))
  return (*times, relative_difference(*results))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--models', default='resnet18,convnet,digits',
                      help="which models' layers (name prefixes)")
  parser.add_argument('--xla-options', choices=('jcc', 'default'),
                      default='jcc', help="jcc's XLA options or XLA's own")
  parser.add_argument('--torch', action='store_true',
                      help="also time PyTorch's forward and backward")
  args = parser.parse_args()
  wanted = tuple(args.models.split(','))
  options = None if args.xla_options == 'jcc' else {}
  if args.torch:
    from benchmarks import require_torch  # pylint: disable=g-import-not-at-top
    torch = require_torch()
    torch.set_num_threads(os.cpu_count())
  print(f'jax {jax.__version__}, {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs, XLA options: '
        f'{_options(options) or "XLA defaults"}')
  torch_head = ' PyTorch forward | PyTorch backward | PyTorch ratio |'
  print('| model | batch, size, in→out, kernel/stride | forward | XLA backward '
        '| taps backward | ratio | difference |' +
        (torch_head if args.torch else '') + '\n' +
        '|---' * (10 if args.torch else 7) + '|')
  for model, batch, size, c_in, c_out, kernel, stride in LAYERS:
    if not model.startswith(wanted):
      continue
    forward, xla, taps, diff = measure(batch, size, c_in, c_out, kernel,
                                       stride, args.rounds, options)
    line = (f'| {model} | {batch}, {size}×{size}, {c_in}→{c_out}, '
            f'{kernel}×{kernel}/{stride} | {forward:.1f} ms | {xla:.1f} ms | '
            f'{taps:.1f} ms | {xla / taps:.2f}× | {diff:.0e} |')
    if args.torch:
      t_forward, t_backward = measure_torch(batch, size, c_in, c_out, kernel,
                                            stride, args.rounds)
      line += (f' {t_forward:.1f} ms | {t_backward:.1f} ms | '
               f'{(t_forward + t_backward) / (forward + xla):.2f}× |')
    print(line, flush=True)
  print('\n| batch, size, in→out, 3×3/1 | lax forward | lax backward | '
        'matmul forward | matmul backward | ratio | difference |\n'
        '|---|---|---|---|---|---|---|')
  for size, channels in TINY_MAPS:
    lax_f, lax_b, mm_f, mm_b, diff = measure_dense(size, channels,
                                                   args.rounds, options)
    print(f'| 512, {size}×{size}, {channels}→{channels} | {lax_f:.2f} ms | '
          f'{lax_b:.2f} ms | {mm_f:.2f} ms | {mm_b:.2f} ms | '
          f'{(lax_f + lax_b) / (mm_f + mm_b):.2f}× | {diff:.0e} |',
          flush=True)


if __name__ == '__main__':
  main()
