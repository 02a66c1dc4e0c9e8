"""The embedded default: scikit-learn's 8×8 digits (1,797 real images, no download).

A small ConvNet at 16×16 trains in a few minutes on 2 CPU cores.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'digits'
  config.dataset.image_size = 16
  config.dataset.num_clusters = 10
  config.model.backbone = 'convnet'
  config.augment.crop_scale = (0.5, 1.0)
  config.augment.flip_prob = 0.0  # a mirrored digit is another symbol
  config.augment.noise_stddev = 0.05
  config.train.batch_size = 256
  config.train.num_epochs = 100
  config.train.warmup_epochs = 50
  return config
