"""jcc beside Contrastive Clustering's own code, on the same images.

Run from the repository root, with PyTorch and torchvision installed
(`pip install -e '.[bench]' torchvision opencv-python-headless`):

  python -m benchmarks.peer_cc --cc-checkout=DIR --seeds=0,1,2

DIR is a checkout of Yunfan-Li/Contrastive-Clustering (CC, AAAI 2021), given
by path and never copied here. Its network (``modules/network.py``: the
instance and cluster heads on a backbone), its losses
(``modules/contrastive_loss.py``: NT-Xent and the cluster contrast with its
entropy) and its augmentation (``modules/transform.py``: torchvision's
RandomResizedCrop, flip, colour jitter with s = 0.5, grayscale) are imported
from DIR. Its training loop (``train.py``) is a script that hard-codes CUDA,
so the loop below repeats its lines on the CPU: Adam, both views through
``Network``, ``loss_instance + loss_cluster``, one step per batch.

Both sides get the same images (an .npz, resized to --image-size), the same
backbone (jcc's ConvNet; CC's side is benchmarks/torch_reference.ConvNet,
the same layers in PyTorch, whose width CC's heads take as their hidden
size, so jcc's heads take it too), batch, epochs, learning rate and
temperatures, and CC's crops (8-100% of the area, cut from the images at
their own size and resized to --image-size; --jcc-crop-min and
--jcc-crop-from change jcc's). The sides:

* ``cc``: CC's own code;
* ``jcc_cc``: jcc with CC's terms alone (instance, cluster, entropy);
* ``jcc_paper``: jcc with the paper's four terms (plus reconstruction and
  DEC's KL after a warm-up of half the epochs);
* ``jcc_config``: configs/cifar10_small.py as it is (its own crops, heads
  and schedule) for the same epochs: jcc's recipe for photos on a CPU.

Each run's cluster head on the plain images is scored by one function,
jcc.evaluate.clustering_metrics (ACC after Hungarian matching, NMI, ARI);
the table gives mean ± std over the seeds and seconds per run, and
--curves prints each side's instance and cluster losses per epoch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if __package__ in (None, ''):  # run as `python benchmarks/NAME.py`
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from jcc import evaluate
from jcc import parallel
from jcc import sources
from jcc import workflows

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data')
SIDES = ('cc', 'jcc_cc', 'jcc_paper', 'jcc_config')
METRICS = ('acc', 'nmi', 'ari')


def cc_modules(checkout: str):
  """CC's network, losses and augmentation, imported from ``checkout``."""
  if not os.path.isfile(os.path.join(checkout, 'modules', 'network.py')):
    raise SystemExit(f'--cc-checkout={checkout}: no modules/network.py there; '
                     'give a checkout of Yunfan-Li/Contrastive-Clustering.')
  sys.path.insert(0, os.path.abspath(checkout))
  return tuple(importlib.import_module(f'modules.{name}') for name in (
      'network', 'contrastive_loss', 'transform'))


def train_cc(checkout: str, images: np.ndarray, labels: np.ndarray,
             args, seed: int) -> dict:
  """CC's code on ``images`` (uint8 NHWC) for args.epochs on the CPU."""
  import torch  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  network, contrastive_loss, transform = cc_modules(checkout)
  torch.manual_seed(seed)
  np.random.seed(seed)
  pictures = [Image.fromarray(image.squeeze()) for image in images]
  views = transform.Transforms(size=args.image_size, s=0.5)

  class Pairs(torch.utils.data.Dataset):
    def __len__(self):
      return len(pictures)

    def __getitem__(self, i):
      return views(pictures[i])

  loader = torch.utils.data.DataLoader(
      Pairs(), batch_size=args.batch_size, shuffle=True, drop_last=True,
      num_workers=0)
  backbone = torch_reference.ConvNet(images.shape[-1], args.widths)
  backbone.rep_dim = backbone.features  # what CC's Network reads
  model = network.Network(backbone, args.projection_dim, args.num_clusters)
  optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate,
                               weight_decay=0.0)
  device = torch.device('cpu')
  instance_loss = contrastive_loss.InstanceLoss(
      args.batch_size, args.instance_temperature, device)
  cluster_loss = contrastive_loss.ClusterLoss(
      args.num_clusters, args.cluster_temperature, device)
  curve = []
  for _ in range(args.epochs):  # CC's train(), on the CPU
    model.train()
    sums = np.zeros(2)
    for x_i, x_j in loader:
      optimizer.zero_grad()
      z_i, z_j, c_i, c_j = model(x_i, x_j)
      losses = instance_loss(z_i, z_j), cluster_loss(c_i, c_j)
      (losses[0] + losses[1]).backward()
      optimizer.step()
      sums += [float(loss) for loss in losses]
    curve.append((sums / len(loader)).round(4).tolist())
  model.eval()
  test = torch.from_numpy(np.stack([
      np.asarray(picture.resize((args.image_size,) * 2, Image.BILINEAR))
      for picture in pictures]).astype(np.float32) / 255.0)
  test = test.reshape(len(images), args.image_size, args.image_size,
                      -1).permute(0, 3, 1, 2)
  with torch.no_grad():
    assigned = torch.cat([model.forward_cluster(batch)
                          for batch in test.split(512)]).numpy()
  return {'metrics': evaluate.clustering_metrics(labels, assigned),
          'curve': curve}


def jcc_config(side: str, npz: str, args, seed: int):
  """The jcc config of ``side`` on the same images and settings."""
  # The paper's sides start from its method (every term), the config's
  # side from the config as it is.
  config = importlib.import_module('jcc.configs.cifar10_small').get_config(
      '' if side == 'jcc_config' else 'paper')
  config.seed = seed
  config.dataset.name, config.dataset.path = 'npz', npz
  config.dataset.image_size = args.image_size
  config.dataset.num_clusters = args.num_clusters
  config.train.batch_size = args.batch_size
  config.train.num_epochs = args.epochs
  config.train.min_steps = 0
  config.train.log_every_steps = max(1, len(np.load(npz)['labels']) //
                                     args.batch_size)  # once an epoch
  if side == 'jcc_config':
    if args.jcc_crop_from_given:
      config.dataset.crop_from_size = args.jcc_crop_from
    return config
  config.model.convnet_widths = tuple(args.widths)
  config.model.head_hidden = args.widths[-1]
  config.model.projection_dim = args.projection_dim
  # torchvision's 8-100% of the original, which CC keeps, unless
  # --jcc-crop-min and --jcc-crop-from say otherwise.
  config.augment.crop_scale = (args.jcc_crop_min, 1.0)
  config.dataset.crop_from_size = args.jcc_crop_from
  config.train.optimizer = 'adam'
  config.train.learning_rate = args.learning_rate
  config.train.lr_schedule = 'constant'
  config.train.lr_warmup_epochs = 0
  config.train.weight_decay = 0.0
  config.model.head_batchnorm = False  # CC's heads have none
  config.train.warmup_epochs = args.epochs // 2
  config.loss.instance_temperature = args.instance_temperature
  config.loss.cluster_temperature = args.cluster_temperature
  config.loss.entropy = 1.0
  if side == 'jcc_cc':
    config.loss.reconstruction = config.loss.kl = 0.0
  return config


def train_jcc(side: str, npz: str, args, seed: int) -> dict:
  config = jcc_config(side, npz, args, seed)
  with tempfile.TemporaryDirectory() as workdir:
    evaluation = workflows.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f]
  curve = [[round(r['loss/instance'], 4), round(r['loss/cluster'] +
                                                r['loss/entropy'], 4)]
           for r in records if 'loss/instance' in r]
  return {'metrics': evaluation.results['cluster_head'], 'curve': curve}


def summarize(values: list[float]) -> str:
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{statistics.mean(values):.3f} ± {std:.3f}'


def table(runs: dict[str, list[dict]], args) -> str:
  lines = [f'{args.epochs} epochs, batch {args.batch_size}, '
           f'{args.image_size}×{args.image_size}, seeds {args.seeds}',
           '| side | head ACC | head NMI | head ARI | ACC per seed | s/run |',
           '|---|---|---|---|---|---|']
  for side, records in runs.items():
    cells = [summarize([r['metrics'][m] for r in records]) for m in METRICS]
    per_seed = ' '.join(f"{r['metrics']['acc']:.3f}" for r in records)
    seconds = statistics.mean(r['seconds'] for r in records)
    lines.append(f'| {side} | ' + ' | '.join(cells) +
                 f' | {per_seed} | {seconds:.0f} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cc-checkout', required=True,
                      help='a checkout of Yunfan-Li/Contrastive-Clustering')
  parser.add_argument('--data', default=os.path.join(
      SHARED, 'cifar10_test_jpeg.npz'))
  parser.add_argument('--sides', default=','.join(SIDES))
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', type=int, default=20)
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--image-size', type=int, default=16)
  parser.add_argument('--widths', default='32,64,128')
  parser.add_argument('--projection-dim', type=int, default=128)
  parser.add_argument('--num-clusters', type=int, default=10)
  parser.add_argument('--learning-rate', type=float, default=1e-3)
  parser.add_argument('--instance-temperature', type=float, default=0.5)
  parser.add_argument('--cluster-temperature', type=float, default=1.0)
  parser.add_argument('--jcc-crop-min', type=float, default=0.08,
                      help="the smallest crop of jcc's CC and paper sides, "
                      "as a share of the image's area (CC's: 0.08)")
  parser.add_argument('--jcc-crop-from', type=int,
                      help="the side of the images jcc cuts its views from "
                      "(default: the images' own for the CC and paper "
                      "sides, as CC; the config's for jcc_config; 0: the "
                      "images resized to --image-size)")
  parser.add_argument('--curves', action='store_true',
                      help="print each run's losses per epoch")
  parser.add_argument('--json', help='append every run to this file')
  args = parser.parse_args()
  args.widths = tuple(int(w) for w in args.widths.split(','))
  # Both sides on the same CPU cores: jcc as its command line runs.
  parallel.use_one_cpu_device_per_core(args.batch_size)
  dataset = sources.load_npz(ml_collections.ConfigDict({'path': args.data}))
  args.jcc_crop_from_given = args.jcc_crop_from is not None
  if args.jcc_crop_from is None:
    args.jcc_crop_from = dataset.images.shape[1]
  runs = {}
  for side in args.sides.split(','):
    for seed in (int(s) for s in args.seeds.split(',')):
      start = time.time()
      if side == 'cc':
        record = train_cc(args.cc_checkout, dataset.images, dataset.labels,
                          args, seed)
      else:
        record = train_jcc(side, args.data, args, seed)
      record.update(side=side, seed=seed, seconds=time.time() - start,
                    jcc_crop_min=args.jcc_crop_min,
                    jcc_crop_from=args.jcc_crop_from)
      runs.setdefault(side, []).append(record)
      print(f"{side} seed={seed}: head ACC {record['metrics']['acc']:.3f} "
            f"({record['seconds']:.0f} s)", flush=True)
      if args.curves:
        print('  instance, cluster+entropy per epoch: ' + ' '.join(
            f'{a:.3f}/{b:.3f}' for a, b in record['curve']), flush=True)
      if args.json:
        with open(args.json, 'a') as f:
          f.write(json.dumps(record) + '\n')
  print(table(runs, args))


if __name__ == '__main__':
  main()
