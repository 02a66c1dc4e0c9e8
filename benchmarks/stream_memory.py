"""Does a streamed run's memory stay flat as the number of images grows?

Run from the repository root:

  python -m benchmarks.stream_memory --files=40000,20000 --image-size=128

For each count N: a folder of N JPEG files at --image-size (made once under
--data, 10 class folders of smooth random pictures), then one training run
on it in a fresh process, `--config.dataset.stream=True`: one epoch of the
instance objective, then the evaluation (every image embedded, k-means,
the report). Each run prints its process's peak resident memory (the
kernel's maximum RSS; the decoding runs on threads, so the process is the
whole tree) beside the size of the decoded set. --in-memory also runs the
same folders with stream=False, for contrast. --processes=2 runs each as
two processes of one JAX cluster on this machine and prints each one's
peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_folder(root: str, count: int, size: int) -> str:
  """``root``/N: N JPEG files in 10 class folders, made once."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, str(count))
  done = os.path.join(folder, '.complete')
  if os.path.exists(done):
    return folder
  shutil.rmtree(folder, ignore_errors=True)
  rng = np.random.default_rng(count)
  for i in range(count):
    cls = os.path.join(folder, f'class{i % 10}')
    os.makedirs(cls, exist_ok=True)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.BILINEAR).save(
        os.path.join(cls, f'{i:06d}.jpg'), quality=90)
  open(done, 'w').close()
  return folder


def config_flags(folder: str, size: int, stream: bool) -> list[str]:
  return ['--config=default', '--config.dataset.name=folder',
          f'--config.dataset.path={folder}',
          f'--config.dataset.image_size={size}',
          f'--config.dataset.stream={stream}',
          # A small network, so that the data's share of the memory shows.
          '--config.model.convnet_widths=(4,8,16,16,16)',
          '--config.model.head_hidden=64', '--config.model.projection_dim=32',
          '--config.train.batch_size=32', '--config.train.num_epochs=1',
          '--config.train.warmup_epochs=1', '--config.loss.reconstruction=0',
          '--config.loss.kl=0', '--config.train.kmeans_n_init=1',
          '--config.train.min_steps=0', '--config.train.log_every_steps=100',
          '--config.train.eval_batch_size=128',
          # Crops and flips only: colour jitter at 128 px would double the
          # run's time and change nothing in its memory.
          '--config.augment.jitter_prob=0', '--config.augment.grayscale_prob=0',
          '--config.augment.blur_prob=0']


def run_one(argv: list[str]) -> None:
  """In this process: jcc's command line on ``argv``, then one JSON line
  with this process's peak RSS."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from jcc import main as jcc_main  # pylint: disable=g-import-not-at-top
  start = time.time()
  try:
    app.run(jcc_main.main, argv=['jcc'] + argv,
            flags_parser=jcc_main._parse_flags)  # pylint: disable=protected-access
  except SystemExit as e:
    if e.code not in (0, None):
      raise
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps({'peak_bytes': peak, 'seconds': time.time() - start}),
        flush=True)


def measure(folder: str, count: int, size: int, stream: bool,
            processes: int) -> list[dict]:
  """Peaks of one run (one record per process)."""
  workdir = tempfile.mkdtemp(prefix='stream_memory_')
  flags = config_flags(folder, size, stream) + [f'--workdir={workdir}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if processes > 1:
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    flags += [f'--config.distributed.coordinator_address=127.0.0.1:{port}',
              f'--config.distributed.num_processes={processes}']
    env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  children = [subprocess.Popen(
      [sys.executable, '-m', 'benchmarks.stream_memory', '--run-one', '--'] +
      flags + ([f'--config.distributed.process_id={i}'] if processes > 1
               else []), cwd=HERE, env=env, stdout=subprocess.PIPE, text=True)
              for i in range(processes)]
  records = []
  for child in children:
    out, _ = child.communicate()
    if child.returncode:
      raise SystemExit(f'the run on {folder} failed ({child.returncode})')
    records.append(json.loads(out.strip().splitlines()[-1]))
  shutil.rmtree(workdir, ignore_errors=True)
  decoded = count * size * size * 3
  for i, r in enumerate(records):
    r.update(files=count, image_size=size, stream=stream, process=i,
             processes=processes, decoded_bytes=decoded)
    print(f'{count:,} files at {size} px ({decoded / 2**30:.2f} GiB decoded),'
          f' stream={stream}, process {i + 1}/{processes}: peak '
          f'{r["peak_bytes"] / 2**30:.2f} GiB, {r["seconds"]:.0f} s',
          flush=True)
  return records


def main():
  if len(sys.argv) > 1 and sys.argv[1] == '--run-one':
    run_one(sys.argv[3:] if sys.argv[2:3] == ['--'] else sys.argv[2:])
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--files', default='40000,20000')
  parser.add_argument('--image-size', type=int, default=128)
  parser.add_argument('--data', default=os.path.join(
      tempfile.gettempdir(), 'jcc_stream_memory'))
  parser.add_argument('--in-memory', action='store_true',
                      help='also run each folder with stream=False')
  parser.add_argument('--processes', type=int, default=1)
  parser.add_argument('--json', help='append every record to this file')
  args = parser.parse_args()
  records = []
  for count in (int(n) for n in args.files.split(',')):
    start = time.time()
    folder = make_folder(args.data, count, args.image_size)
    print(f'{folder}: {count:,} files ready in {time.time() - start:.0f} s',
          flush=True)
    for stream in (True, False) if args.in_memory else (True,):
      records += measure(folder, count, args.image_size, stream,
                         args.processes)
  if args.json:
    with open(args.json, 'a') as f:
      for r in records:
        f.write(json.dumps(r) + '\n')


if __name__ == '__main__':
  main()
