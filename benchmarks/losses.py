"""Forward+backward time of jcc.losses against a plain PyTorch CPU version.

Run from the repository root:

  JAX_PLATFORMS=cpu python -m benchmarks.losses

Both sides get the same inputs and the same thread count, and are timed
alternately in one run (median of several rounds, after warm-up). The PyTorch
side is the straightforward formula (as in Contrastive Clustering's code, but
for any batch size); the ratio is PyTorch time / jcc time, so > 1 means jcc is
faster.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from benchmarks import require_torch
from benchmarks import timing
from jcc import losses

torch = require_torch()
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,g-bad-import-order


def torch_paired_ce(y: torch.Tensor, temperature: float) -> torch.Tensor:
  """Mean cross-entropy of each of 2n rows against its other-view twin."""
  two_n = y.shape[0]
  n = two_n // 2
  sim = y @ y.T / temperature
  sim = sim.masked_fill(torch.eye(two_n, dtype=torch.bool), float('-inf'))
  targets = (torch.arange(two_n) + n) % two_n
  return F.cross_entropy(sim, targets)


def torch_instance(z_a, z_b, temperature=0.5):
  return torch_paired_ce(F.normalize(torch.cat([z_a, z_b]), dim=1), temperature)


def torch_cluster(c_a, c_b, temperature=1.0):
  return torch_paired_ce(F.normalize(torch.cat([c_a.T, c_b.T]), dim=1),
                         temperature)


def time_torch(fn, a, b):
  a = torch.tensor(a, requires_grad=True)
  b = torch.tensor(b, requires_grad=True)

  def run():
    a.grad = b.grad = None
    fn(a, b).backward()
    return a.grad
  return run


def time_jax(fn, a, b):
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
  a, b = jax.device_put(a), jax.device_put(b)

  def run():
    return jax.block_until_ready(step(a, b))
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--min-seconds', type=float, default=0.2)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  rng = np.random.default_rng(0)

  settings = []
  for b in (256, 1024, 4096):
    z_a, z_b = rng.normal(size=(2, b, 128)).astype(np.float32)
    settings.append((f'instance B={b} d=128', losses.instance_contrastive_loss,
                     torch_instance, z_a, z_b))
  for k in (10, 200):
    logits = rng.normal(size=(2, 256, k)).astype(np.float32)
    c_a, c_b = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    settings.append((f'cluster  B=256 K={k}', losses.cluster_contrastive_loss,
                     torch_cluster, c_a, c_b))

  print(f'jax {jax.__version__} ({jax.devices()[0].platform}), '
        f'torch {torch.__version__}, threads={args.threads}, '
        f'forward+backward, median of {args.rounds} rounds')
  print(f'{"setting":24s} {"jcc ms":>9s} {"torch ms":>9s} {"ratio":>7s}')
  for name, jax_fn, torch_fn, a, b in settings:
    # Same inputs, same values: check agreement before timing.
    want = float(torch_fn(torch.tensor(a), torch.tensor(b)))
    got = float(jax_fn(a, b))
    assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (name, got, want)
    t = timing.measure_alternating(
        {'jcc': time_jax(jax_fn, a, b), 'torch': time_torch(torch_fn, a, b)},
        args.rounds, args.min_seconds)
    print(f'{name:24s} {1e3 * t["jcc"]:9.3f} {1e3 * t["torch"]:9.3f} '
          f'{t["torch"] / t["jcc"]:6.2f}x')


if __name__ == '__main__':
  main()
