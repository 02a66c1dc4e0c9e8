"""Does Grain read a streamed folder faster than jcc's threads?

Run from the repository root (Grain is not a dependency of jcc):

  pip install grain
  python -m benchmarks.grain_reader --files=4096 --image-size=32,128

For each size: a folder of JPEG files at that size (made once under --data,
as benchmarks.stream_memory makes them), then one epoch of it in shuffled
batches (each reader its own order), read in turn by

* ``threads``: what a run with config.dataset.stream=True reads them with,
  :class:`jcc.sources.streamed.FileImages` (a pool of threads decoding with
  Pillow) under :func:`jcc.pipeline.train_batches` (a thread keeping two
  batches ahead);
* ``grain Nw``: a Grain ``MapDataset`` over the same files, decoded by the
  same function, batched, read on Grain's threads (``ReadOptions``) in the
  main process (0 workers) or in N worker processes (``mp_prefetch``).

Each reader's time to its first batch (worker start-up included) and its
images/s over the whole epoch from its start are the best of --repeats,
the readers in alternation so that a change of load falls on all of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import stream_memory
from jcc import pipeline
from jcc import sources
from jcc.sources import image_files


class DecodedFiles:
  """Random access to image files decoded at size × size (a Grain data
  source; picklable, so that worker processes get a copy)."""

  def __init__(self, files: list[str], size: int, mode: str):
    self.files, self.size, self.mode = files, size, mode

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, row: int) -> np.ndarray:
    # The decoder FileImages reads each file with.
    return image_files._read_image(  # pylint: disable=protected-access
        self.files[row], self.size, self.mode)[0]


def threads_batches(images, batch_size: int, steps: int):
  """jcc's streamed training reader: shuffled batches of ``images``."""
  dataset = sources.ImageDataset('folder', images, None)
  for batch in pipeline.train_batches(dataset, batch_size, 0, 0, steps):
    yield batch['images']


def grain_batches(source: DecodedFiles, batch_size: int, workers: int):
  """The same files through Grain, one epoch: shuffled, batched, read on
  its threads, in ``workers`` processes (0: in this one)."""
  import grain.python as grain  # pylint: disable=g-import-not-at-top
  data = grain.MapDataset.source(source).shuffle(seed=0).batch(
      batch_size, drop_remainder=True).to_iter_dataset()
  if workers:
    data = data.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  yield from data


def read_rate(batches, expected: int) -> tuple[float, float]:
  """(seconds to the first batch, images/s over all of them) of a reader
  from its start, which must give ``expected`` images."""
  start = time.perf_counter()
  first, count = None, 0
  for images in batches:
    first = first or time.perf_counter() - start
    count += len(images)
  assert count == expected, (count, expected)
  return first, count / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--files', type=int, default=4096)
  parser.add_argument('--image-size', default='32,128',
                      help='comma-separated sizes of the JPEG files')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--workers', default='0,1,2',
                      help="comma-separated numbers of Grain's worker "
                      'processes')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--data', default=os.path.join(
      os.environ.get('TMPDIR', '/tmp'), 'jcc_grain_reader'))
  args = parser.parse_args()
  try:
    import grain  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit('benchmarks.grain_reader compares jcc with Grain: pip install '
             'grain')
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # Grain reads absl flags of its own
  steps = args.files // args.batch_size
  if not steps:
    sys.exit(f'--files={args.files}: fewer than one batch of '
             f'{args.batch_size}')
  workers = [int(w) for w in args.workers.split(',')]
  print(f'grain {grain.__version__}, {os.cpu_count()} CPUs, '
        f'{args.files} files, batches of {args.batch_size}, '
        f'best of {args.repeats}', flush=True)
  print(f'{"size":>5s} {"reader":>10s} {"first batch":>11s} '
        f'{"images/s":>9s} {"/ threads":>9s}')
  for size in (int(s) for s in args.image_size.split(',')):
    folder = stream_memory.make_folder(
        os.path.join(args.data, str(size)), args.files, size)
    files = sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder)
        for name in names if name.endswith('.jpg'))
    images, _ = image_files.stream_files(files, size, True, folder, 'RGB')
    source = DecodedFiles(images.files, size, 'RGB')
    readers = {'threads': lambda: threads_batches(
        images, args.batch_size, steps)}
    for w in workers:
      readers[f'grain {w}w'] = lambda w=w: grain_batches(
          source, args.batch_size, w)
    best = {name: (np.inf, 0.0) for name in readers}
    for _ in range(args.repeats):
      for name, batches in readers.items():
        first, rate = read_rate(batches(), steps * args.batch_size)
        best[name] = (min(best[name][0], first), max(best[name][1], rate))
    for name, (first, rate) in best.items():
      print(f'{size:5d} {name:>10s} {first:10.2f}s {rate:9.0f} '
            f'{rate / best["threads"][1]:9.2f}', flush=True)


if __name__ == '__main__':
  main()
