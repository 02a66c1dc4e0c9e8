"""CIFAR-100 clustered into its 20 superclasses (TFDS `coarse_label`).

60,000 images (train+test), K=20; CIFAR-10's recipe (configs/cifar10.py):
ResNet-34 with the CIFAR stem at 32×32, CC's schedule.
"""

from jcc.configs import default


def get_config():
  config = default.accelerator_schedule(default.get_config())
  config.dataset.name = 'cifar100'
  config.dataset.image_size = 32
  config.dataset.num_clusters = 20
  config.model.backbone = 'resnet34_cifar'
  return config
