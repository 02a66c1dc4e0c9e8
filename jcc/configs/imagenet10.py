"""ImageNet-10: the 13,000 ILSVRC2012 train images of 10 synsets (K=10).

The synsets are in jcc/wnids/imagenet10.txt. The data come from TFDS
imagenet2012 (manual download: --config.dataset.manual_dir=DIR with the tar
files, --config.dataset.tfds_download=True once) or from an ILSVRC2012 train
folder (--config.dataset.path=DIR, DIR/<wnid>/*.JPEG). CC's setting:
ResNet-34 at 224×224, s = 1.0, Gaussian blur with p = 0.5.

Beyond CC (neighbour terms, self-labelling): the literature's settings are
in configs/cifar10.py's docstring, untuned here and not enabled.
"""

from jcc.configs import default


def get_config():
  config = default.accelerator_schedule(default.get_config())
  config.dataset.name = 'imagenet10'
  config.dataset.image_size = 224
  config.dataset.num_clusters = 10
  config.model.backbone = 'resnet34'
  default.set_jitter_strength(config.augment, 1.0)
  config.augment.blur_prob = 0.5
  config.train.eval_batch_size = 512
  return config
