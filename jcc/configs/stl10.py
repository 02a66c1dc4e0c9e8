"""STL-10 (TFDS stl10): 13,000 labelled images (train+test), K=10, plus the
100,000 unlabelled images for the instance objective alone.

ResNet-34 with the ImageNet stem at the native 96×96 (CC resizes to 224),
jitter strength s = 1.0.

Beyond CC (neighbour terms, self-labelling): the literature's settings are
in configs/cifar10.py's docstring, untuned here and not enabled.
"""

from jcc.configs import default


def get_config():
  config = default.accelerator_schedule(default.get_config())
  config.dataset.name = 'stl10'
  config.dataset.image_size = 96
  config.dataset.num_clusters = 10
  config.dataset.use_unlabelled = True
  config.model.backbone = 'resnet34'
  default.set_jitter_strength(config.augment, 1.0)
  return config
