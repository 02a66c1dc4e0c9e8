"""ImageNet-Dogs: the 19,500 ILSVRC2012 train images of 15 dog synsets (K=15).

The synsets are in jcc/wnids/imagenet_dogs.txt; data as for ImageNet-10
(configs/imagenet10.py), whose recipe this keeps.
"""

from jcc.configs import imagenet10


def get_config():
  config = imagenet10.get_config()
  config.dataset.name = 'imagenet_dogs'
  config.dataset.num_clusters = 15
  return config
