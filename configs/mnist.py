"""MNIST (TFDS mnist train+test, or a folder of its IDX files), 28×28, K=10.

For the 10,000 test images as an .npz (../shared/data/mnist_test.npz):
--config.dataset.name=npz --config.dataset.path=FILE. The augmentation is
digits' (configs/digits.py): crops that keep most of the digit, no flip,
brightness and contrast, pixel noise.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'mnist'
  config.dataset.image_size = 28
  config.dataset.num_clusters = 10
  config.model.backbone = 'convnet'
  config.model.convnet_widths = (32, 64, 128)
  config.model.decoder_width = 32
  config.augment.crop_scale = (0.5, 1.0)
  config.augment.flip_prob = 0.0  # a mirrored digit is another symbol
  config.augment.noise_stddev = 0.05
  config.augment.jitter_prob = 1.0
  config.augment.jitter_random_order = False
  config.loss.entropy = 2.0
  config.train.batch_size = 256
  config.train.learning_rate = 1e-3
  config.train.num_epochs = 20
  config.train.warmup_epochs = 10
  config.train.target_update_interval = 140  # IDEC's MNIST value
  return config
