"""The embedded default: scikit-learn's 8×8 digits (1,797 real images, no download).

Native 8×8 input and a narrow ConvNet make a step cheap, so the run can
afford many steps (300 epochs of 7). On this set the number of steps mattered
more than the width of the network; benchmarks/RESULTS.md has the runs that
chose these values and their times.
"""

from jcc.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'digits'
  config.dataset.image_size = 8
  config.dataset.num_clusters = 10
  config.model.backbone = 'convnet'
  config.model.convnet_widths = (16, 32, 64)
  config.model.decoder_width = 16
  config.augment.crop_scale = (0.5, 1.0)
  config.augment.flip_prob = 0.0  # a mirrored digit is another symbol
  config.augment.noise_stddev = 0.05
  # Grayscale: brightness then contrast on every view, nothing else.
  config.augment.jitter_prob = 1.0
  config.augment.jitter_random_order = False
  # Against collapse onto fewer clusters on this small set (CC's users raise
  # the entropy weight against collapse).
  config.loss.entropy = 2.0
  config.train.batch_size = 256
  # Higher than CC's 3e-4: a short run on a small set (3e-4 was worse here).
  config.train.learning_rate = 1e-3
  config.train.num_epochs = 300
  config.train.warmup_epochs = 150
  return config
