"""MNIST (TFDS mnist train+test, or a folder of its IDX files), 28×28, K=10.

For the 10,000 test images as an .npz (../shared/data/mnist_test.npz):
--config.dataset.name=npz --config.dataset.path=FILE. The augmentation and
loss weights are digits' (configs/digits.py): crops that keep most of the
digit, no flip, brightness and contrast, pixel noise, entropy weight 2.
"""

from configs import digits


def get_config():
  config = digits.get_config()
  config.dataset.name = 'mnist'
  config.dataset.image_size = 28
  # digits' narrow ConvNet (16-32-64): about 350 img/s on 2 CPU cores.
  config.train.num_epochs = 25
  config.train.warmup_epochs = 12
  config.train.target_update_interval = 140  # IDEC's MNIST value
  return config
