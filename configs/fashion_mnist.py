"""Fashion-MNIST (TFDS fashion_mnist, or its IDX files), 28×28, K=10.

Debian's dataset-fashion-mnist package installs the IDX files:
--config.dataset.path=/usr/share/datasets/fashion-mnist. Clothes may be
mirrored, so flips are on; otherwise MNIST's recipe (configs/mnist.py).
"""

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.dataset.name = 'fashion_mnist'
  config.augment.flip_prob = 0.5
  return config
