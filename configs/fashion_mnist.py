"""Fashion-MNIST (TFDS fashion_mnist, or its IDX files), 28×28, K=10.

Debian's dataset-fashion-mnist package installs the IDX files:
--config.dataset.path=/usr/share/datasets/fashion-mnist. Clothes may be
mirrored, so flips are on; otherwise digits' recipe (configs/digits.py) at the
full 28×28, without MNIST's rotation and shear and 16×16 input, which have
not been measured on clothes (benchmarks/RESULTS.md).
"""

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.dataset.name = 'fashion_mnist'
  config.dataset.image_size = 28
  config.augment.flip_prob = 0.5
  config.augment.rotation = 0.0
  config.augment.shear = 0.0
  # digits' narrow ConvNet (16-32-64): about 350 img/s on 2 CPU cores.
  config.train.num_epochs = 25
  config.train.warmup_epochs = 12
  return config
