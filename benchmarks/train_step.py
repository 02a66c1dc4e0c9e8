"""Images/s of jcc's train step against a plain PyTorch step of the same model.

Run from the repository root (`pip install -e '.[bench]'` first):

  JAX_PLATFORMS=cpu python -m benchmarks.train_step

Settings: (a) the CIFAR-stem ResNet-18 at 32×32×3, batch 64; (b) the small
ConvNet at 28×28×1, batch 256. Each step: two views of the batch through the
network (2B images), the four objectives, backward, Adam. jcc's step also
makes the two augmented views on the device (crop, flip, jitter, noise); the
PyTorch step is given ready views, so it does strictly less work. Both sides
use the same thread count and are timed alternately in one run; one line per
setting ends in ratio = jcc img/s over PyTorch img/s. jcc runs on the devices
a run of jcc gets: on a CPU, one per core unless JAX_NUM_CPU_DEVICES says
otherwise. With --compare-xla-default, jcc's step compiled with XLA's default
options instead of jcc's (jcc.conv.compiler_options) is timed in the same
rounds, its ratio to PyTorch printed as xla_default_ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
from benchmarks import require_torch
from benchmarks import timing
from benchmarks.jcc_step import step_runner
from jcc import conv
from jcc import parallel
from jcc.configs import default

torch = require_torch()
from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top,g-bad-import-order

SETTINGS = {
    'resnet18_cifar-32x32x3-b64': dict(
        backbone='resnet18_cifar', image_size=32, channels=3, batch=64),
    'convnet-28x28x1-b256': dict(
        backbone='convnet', image_size=28, channels=1, batch=256),
    # ImageNet-10's setting; for accelerators (--compute-dtype=bfloat16).
    'resnet34-224x224x3-b256': dict(
        backbone='resnet34', image_size=224, channels=3, batch=256),
}
CPU_SETTINGS = 'resnet18_cifar-32x32x3-b64,convnet-28x28x1-b256'


def jax_runner(setting: dict, compute_dtype: str,
               compiler_options: dict[str, str] | None = None):
  config = default.get_config()
  config.model.backbone = setting['backbone']
  config.dataset.image_size = setting['image_size']
  config.train.batch_size = setting['batch']
  config.train.compute_dtype = compute_dtype
  return step_runner(config, setting['channels'],
                     compiler_options=compiler_options)


def torch_runner(setting: dict, device: str = 'cpu',
                 compute_dtype: str = 'float32'):
  torch.manual_seed(0)
  model = torch_reference.ClusteringModel(
      setting['backbone'], 10, setting['image_size'], setting['channels'])
  model.train().to(device)
  if device == 'cuda':
    model = model.to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(model.parameters(), lr=3e-4)
  batch, size, channels = (setting['batch'], setting['image_size'],
                           setting['channels'])
  views = torch.rand(2 * batch, channels, size, size, device=device)
  target = torch.distributions.Dirichlet(torch.ones(10)).sample(
      (batch,)).to(device)
  autocast = torch.autocast(device, dtype=torch.bfloat16,
                            enabled=compute_dtype == 'bfloat16')

  def run():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = torch_reference.total_loss(model, views, target)
    loss.backward()
    opt.step()
    if device == 'cuda':
      torch.cuda.synchronize()
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--min-seconds', type=float, default=2.0)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--compute-dtype', default='float32')
  parser.add_argument('--settings', default=CPU_SETTINGS,
                      help=f'comma-separated, of {",".join(SETTINGS)}')
  parser.add_argument('--torch-device', default='cpu', help='cpu or cuda')
  parser.add_argument('--compare-xla-default', action='store_true',
                      help='also time jcc\'s step under XLA\'s default '
                      'compiler options')
  parser.add_argument('--peak-tflops', type=float, default=0.0,
                      help='the chip\'s peak for the compute dtype; prints '
                      'model FLOP utilisation (H200 bf16 dense: 989)')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  names = args.settings.split(',')
  # jcc's own choice on a CPU: one device per core (jcc.parallel).
  parallel.use_one_cpu_device_per_core(
      math.gcd(*(SETTINGS[name]['batch'] for name in names)))
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
        f'({jax.device_count()} device(s)), torch {torch.__version__}, '
        f'threads={args.threads}, jcc compute dtype {args.compute_dtype}, '
        f'median of {args.rounds} alternating rounds, XLA options '
        f'{conv.compiler_options() or "default"}', flush=True)
  for name in names:
    setting = SETTINGS[name]
    ours_run = jax_runner(setting, args.compute_dtype)
    runners = {'jcc': ours_run,
               'torch': torch_runner(setting, args.torch_device,
                                     args.compute_dtype)}
    if args.compare_xla_default:
      runners['xla_default'] = jax_runner(setting, args.compute_dtype,
                                          compiler_options={})
    t = timing.measure_alternating(runners, args.rounds, args.min_seconds)
    ours = setting['batch'] / t['jcc']
    theirs = setting['batch'] / t['torch']
    mfu = ''
    if args.peak_tflops and ours_run.flops:
      mfu = (f'  step={ours_run.flops / 1e9:.0f} GFLOP  '
             f'MFU={ours_run.flops / t["jcc"] / (args.peak_tflops * 1e12):.1%}')
    baseline = ''
    if 'xla_default' in t:
      other = setting['batch'] / t['xla_default']
      baseline = (f'  xla_default={other:8.1f} img/s  '
                 f'xla_default_ratio={other / theirs:.2f}')
    print(f'{name:28s} jcc={ours:8.1f} img/s  torch={theirs:8.1f} img/s{mfu}  '
          f'ratio={ours / theirs:.2f}{baseline}', flush=True)


if __name__ == '__main__':
  main()
