"""Does the input ever limit training? Images/s of the input pipeline alone,
of the pipeline plus the on-device augmentation, and of the whole train step.

Run from the repository root:

  JAX_PLATFORMS=cpu python -m benchmarks.input_pipeline

For each config: an in-memory dataset of random uint8 images at the config's
size (the cache every source ends in), `jcc.pipeline.train_batches` +
`prefetch_to_device` (NumPy gathers, a thread prefetches, host batches go to
the devices); the same host batches prefetched by tf.data instead, where
TensorFlow is installed (`pip install -e '.[tfds]'`), for comparison; jcc's
pipeline plus `augment.two_views` jitted; then the train step of the
config's model and batch (benchmarks.jcc_step.step_runner). If the input
columns are far above the last, input does not limit training.
--streamed adds, for each config, the same images streamed from disk
(config.dataset.stream): as JPEG files decoded at every read, and as the set
`python -m jcc.convert` writes, read by rows; each through the pipeline and
the augmentation, against the same train step.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.jcc_step import step_runner
from jcc import augment
from jcc import convert
from jcc import parallel
from jcc import pipeline
from jcc import sources
from jcc.sources import image_files
from jcc.sources import streamed


def tf_data_prefetch(batches):
  """The same host batches, prefetched by tf.data (from_generator)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  batches = iter(batches)
  first = next(batches)
  signature = tuple(tf.TensorSpec(a.shape, tf.as_dtype(a.dtype))
                    for a in first)

  def generate():
    yield first
    yield from batches

  dataset = tf.data.Dataset.from_generator(
      generate, output_signature=signature).prefetch(tf.data.AUTOTUNE)
  for batch in dataset:
    yield tuple(a.numpy() for a in batch)


def _tf_data_available() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def input_rate(dataset, config, steps: int, augment_too: bool,
               prefetch=pipeline.prefetch_in_thread) -> float:
  """Images/s of `steps` batches through the pipeline (and augmentation)."""
  mesh = parallel.make_mesh()
  sharding = parallel.shardings(mesh).batch
  put = lambda batch: tuple(  # noqa: E731
      jax.make_array_from_process_local_data(sharding, x) for x in batch)
  key = jax.random.key(0)
  views = jax.jit(lambda k, x: augment.two_views(
      k, x.astype(jnp.float32) / 255.0, config.augment,
      size=config.dataset.image_size))
  bs = config.train.batch_size
  def host_batches(num_steps):  # (images, indices), as tf.data takes them
    return ((b['images'], b['indices']) for b in pipeline.host_batches(
        dataset, bs, 0, 0, num_steps))

  # One untimed batch: tf.data start-up and compilation.
  images, _ = next(pipeline.prefetch_to_device(prefetch(host_batches(1)),
                                               put))
  jax.block_until_ready(views(key, images))
  start = time.perf_counter()
  last = None
  for step, (images, _) in enumerate(pipeline.prefetch_to_device(
      prefetch(host_batches(steps)), put)):
    last = views(jax.random.fold_in(key, step), images) if augment_too else (
        images)
  jax.block_until_ready(last)
  return steps * bs / (time.perf_counter() - start)


def streamed_images(images: np.ndarray):
  """(label, streamed reader) of ``images`` written as JPEG files (decoded
  at every read) and as a converted set (read by rows), in a temporary
  folder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix='input_pipeline_')
  folder = os.path.join(root, 'jpeg')
  os.makedirs(folder)
  files = []
  for i, image in enumerate(images):
    files.append(os.path.join(folder, f'{i:06d}.jpg'))
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image
                    ).save(files[-1], quality=90)
  size = images.shape[1]
  yield 'jpeg', image_files.stream_files(files, size, True, folder)[0]
  convert.convert(folder, os.path.join(root, 'converted'), size,
                  show_progress=False)
  yield 'converted', streamed.StoredImages(
      os.path.join(root, 'converted', streamed.IMAGES))
  shutil.rmtree(root, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='digits,mnist,cifar10_small')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--examples', type=int, default=4096)
  parser.add_argument('--compute-dtype', default='float32')
  parser.add_argument('--streamed', action='store_true',
                      help='also stream the images from JPEG files and from '
                      'a set python -m jcc.convert wrote (dataset.stream)')
  args = parser.parse_args()
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
        f'({jax.device_count()} device(s)), {os.cpu_count()} CPUs, '
        f'{args.steps} batches per input measurement', flush=True)
  with_tf = _tf_data_available()
  print(f'{"config":14s} {"shape":>12s} {"batch":>5s} {"input":>10s} '
        f'{"tf.data":>10s} {"input+aug":>10s} {"train step":>10s} '
        f'{"input+aug/step":>14s}')
  for name in args.configs.split(','):
    config = importlib.import_module(f'jcc.configs.{name}').get_config()
    config.train.compute_dtype = args.compute_dtype
    # The batches carry the images the views are cut from.
    size = config.dataset.crop_from_size or config.dataset.image_size
    channels = 1 if name in ('digits', 'mnist', 'fashion_mnist') else 3
    rng = np.random.default_rng(0)
    n = max(args.examples, config.train.batch_size)
    dataset = sources.ImageDataset(name, rng.integers(
        0, 256, (n, size, size, channels), dtype=np.uint8), None)
    # The two ways of prefetching in alternation, the best of three each.
    threaded, tf_data = 0.0, 0.0
    for _ in range(3):
      threaded = max(threaded, input_rate(dataset, config, args.steps, False))
      if with_tf:
        tf_data = max(tf_data, input_rate(dataset, config, args.steps, False,
                                          tf_data_prefetch))
    tf_data = f'{tf_data:10.0f}' if with_tf else f'{"-":>10s}'
    augmented = input_rate(dataset, config, args.steps, True)
    step_seconds = timing.measure_alternating(
        {'step': step_runner(config, channels)}, 1, 2.0)['step']
    step = config.train.batch_size / step_seconds
    print(f'{name:14s} {f"{size}x{size}x{channels}":>12s} '
          f'{config.train.batch_size:5d} {threaded:10.0f} {tf_data} '
          f'{augmented:10.0f} '
          f'{step:10.0f} {augmented / step:14.1f}', flush=True)
    if args.streamed:
      for label, images in streamed_images(dataset.images):
        rate = input_rate(sources.ImageDataset(name, images, None), config,
                          args.steps, True)
        print(f'{name + " " + label:14s} {f"{size}x{size}x{channels}":>12s} '
              f'{config.train.batch_size:5d} {"-":>10s} {"-":>10s} '
              f'{rate:10.0f} {step:10.0f} {rate / step:14.1f}', flush=True)


if __name__ == '__main__':
  main()
