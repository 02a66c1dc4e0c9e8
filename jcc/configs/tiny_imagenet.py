"""Tiny-ImageNet: 100,000 train images of 200 classes at 64×64 (K=200).

No TFDS builder exists: download tiny-imagenet-200.zip, extract it, and pass
--config.dataset.path=.../tiny-imagenet-200 (the folder holding train/).
ResNet-34 with the ImageNet stem at the native 64×64, s = 0.5.

Beyond CC (neighbour terms, self-labelling): the literature's settings are
in configs/cifar10.py's docstring, untuned here and not enabled.
"""

from jcc.configs import default


def get_config():
  config = default.accelerator_schedule(default.get_config())
  config.dataset.name = 'tiny_imagenet'
  config.dataset.image_size = 64
  config.dataset.num_clusters = 200
  config.model.backbone = 'resnet34'
  config.train.batch_size = 512  # every one of the 200 clusters in a batch
  return config
