"""The Quickstart's main job against a longer reference schedule, side by side.

Run from the repository root:

  python -m benchmarks.quickstart --seeds=0,1,2

For each seed, in alternation and each in a fresh workdir, two whole runs of
the command line as a user starts it (a new process: import, compilation,
training, evaluation and report included):

* quickstart: the README's main job, ``python -m jcc.main
  --config=configs/digits.py --workdir=W``, on the devices jcc chooses (one
  per core on a CPU);
* reference: the same config trained for 300 epochs (2,100 steps, warm-up
  150) on one CPU device (JAX_NUM_CPU_DEVICES=1), run from
  --reference-checkout (default: this one), a checkout of another jcc
  commit (``git worktree add /tmp/jcc_ref COMMIT``) whose code it runs.

One line per run (wall seconds, steps, devices, the cluster head's ACC, NMI
and ARI), then
the median wall time of each and their ratio, reference over quickstart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    'quickstart': ([], {}),
    'reference': (['--config.train.num_epochs=300',
                   '--config.train.warmup_epochs=150'],
                  {'JAX_NUM_CPU_DEVICES': '1'}),
}


def run(name: str, seed: int, workdir: str, checkout: str) -> dict:
  """One whole command-line run of ``checkout``'s jcc; its wall time, plan
  and head ACC."""
  flags, env = RUNS[name]
  environment = {k: v for k, v in os.environ.items()
                 if k not in ('JAX_NUM_CPU_DEVICES', 'XLA_FLAGS')}
  environment.update(env)
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, '-m', 'jcc.main', '--config=configs/digits.py',
       f'--workdir={workdir}', f'--config.seed={seed}', *flags],
      cwd=checkout, env=environment, capture_output=True, text=True,
      check=False)
  seconds = time.perf_counter() - start
  if proc.returncode:
    sys.exit(f'{name} seed {seed} failed:\n{proc.stderr[-3000:]}')
  plan = re.search(r'(\d+) devices, (\d+) steps', proc.stderr)
  with open(os.path.join(workdir, 'results.json')) as f:
    head = json.load(f)['cluster_head']
  return {'run': name, 'seed': seed, 'seconds': seconds,
          'devices': int(plan[1]), 'steps': int(plan[2]),
          **{metric: head[metric] for metric in ('acc', 'nmi', 'ari')}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--json', help='also append every run to this file')
  parser.add_argument('--reference-checkout', default=REPO_ROOT,
                      help="the jcc checkout whose code the reference runs")
  args = parser.parse_args()
  checkouts = {'quickstart': REPO_ROOT,
               'reference': os.path.abspath(args.reference_checkout)}
  results = []
  for seed in (int(s) for s in args.seeds.split(',')):
    for name in RUNS:
      with tempfile.TemporaryDirectory() as workdir:
        result = run(name, seed, os.path.join(workdir, 'w'),
                     checkouts[name])
      results.append(result)
      print(f'{name:10s} seed={seed}  {result["seconds"]:6.1f} s  '
            f'{result["steps"]} steps on {result["devices"]} device(s)  '
            f'head ACC {result["acc"]:.3f} NMI {result["nmi"]:.3f} '
            f'ARI {result["ari"]:.3f}', flush=True)
      if args.json:
        with open(args.json, 'a') as f:
          f.write(json.dumps(result) + '\n')
  medians = {name: statistics.median(r['seconds'] for r in results
                                     if r['run'] == name) for name in RUNS}
  print(f'median wall: quickstart {medians["quickstart"]:.1f} s, reference '
        f'{medians["reference"]:.1f} s; ratio '
        f'{medians["reference"] / medians["quickstart"]:.2f}')


if __name__ == '__main__':
  main()
