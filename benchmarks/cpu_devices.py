"""Images/s of jcc's train step on one CPU device against one device per core.

Run from the repository root:

  python -m benchmarks.cpu_devices

On a CPU, JAX makes one device, which runs each operation with the host's
threads; JAX_NUM_CPU_DEVICES=N makes N devices, and jcc then splits each batch
over them, as over the chips of an accelerator. Which is faster depends on
the machine and the model, so this measures it: for each config, child
processes with JAX_NUM_CPU_DEVICES=1 and =N (N: --devices, default the
number of cores) time the config's joint train step (benchmarks.jcc_step)
in alternation, --rounds times. One line per config ends in ratio = N
devices' img/s over one device's (the median over rounds).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAYSCALE = ('digits', 'mnist', 'fashion_mnist')


def child(name: str, min_seconds: float) -> None:
  """Prints one JSON line: the config's train step in img/s here."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  from benchmarks.jcc_step import step_runner  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'jcc.configs.{name}').get_config()
  run = step_runner(config, 1 if name in GRAYSCALE else 3)
  seconds = timing.measure_alternating({'step': run}, 1, min_seconds)['step']
  print(json.dumps({'devices': jax.device_count(),
                    'images_per_second': config.train.batch_size / seconds}))


def measure(name: str, devices: int, min_seconds: float) -> float:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_NUM_CPU_DEVICES=str(devices))
  # A device count in XLA_FLAGS would win over ours.
  env['XLA_FLAGS'] = re.sub(r'--xla_force_host_platform_device_count=\S*',
                            '', env.get('XLA_FLAGS', '')).strip()
  out = subprocess.run(
      [sys.executable, '-m', 'benchmarks.cpu_devices', '--child', name,
       f'--min-seconds={min_seconds}'],
      cwd=REPO_ROOT, env=env, check=True, text=True,
      stdout=subprocess.PIPE).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result['devices'] == devices, result
  return result['images_per_second']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='digits,mnist,cifar10_small')
  parser.add_argument('--devices', type=int, default=os.cpu_count())
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--min-seconds', type=float, default=10.0)
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child, args.min_seconds)
    return
  if args.devices < 2:
    parser.error('--devices: at least 2, to compare with one device')
  print(f'{os.cpu_count()} CPUs; one device against {args.devices}; median '
        f'of {args.rounds} alternating rounds of >= {args.min_seconds:g} s',
        flush=True)
  for name in args.configs.split(','):
    rates = {1: [], args.devices: []}
    for _ in range(args.rounds):
      for devices in rates:
        rates[devices].append(measure(name, devices, args.min_seconds))
    one, many = (statistics.median(rates[d]) for d in rates)
    print(f'{name:14s} 1 device={one:7.1f} img/s  {args.devices} devices='
          f'{many:7.1f} img/s  ratio={many / one:.2f}', flush=True)


if __name__ == '__main__':
  main()
