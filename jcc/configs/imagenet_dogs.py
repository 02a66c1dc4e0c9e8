"""ImageNet-Dogs: the 19,500 ILSVRC2012 train images of 15 dog synsets (K=15).

The synsets are in jcc/wnids/imagenet_dogs.txt; data as for ImageNet-10
(configs/imagenet10.py), with its recipe: ResNet-34 at 224×224, s = 1.0,
Gaussian blur with p = 0.5.
"""

from jcc.configs import default


def get_config():
  config = default.accelerator_schedule(default.get_config())
  config.dataset.name = 'imagenet_dogs'
  config.dataset.image_size = 224
  config.dataset.num_clusters = 15
  config.model.backbone = 'resnet34'
  default.set_jitter_strength(config.augment, 1.0)
  config.augment.blur_prob = 0.5
  config.train.eval_batch_size = 512
  return config
