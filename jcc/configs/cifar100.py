"""CIFAR-100 clustered into its 20 superclasses (TFDS `coarse_label`).

60,000 images (train+test), K=20; otherwise CIFAR-10's recipe
(configs/cifar10.py).
"""

from jcc.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.dataset.name = 'cifar100'
  config.dataset.num_clusters = 20
  return config
