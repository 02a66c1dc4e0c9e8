"""CIFAR-10 (TFDS cifar10, train+test: 60,000 images, K=10).

Contrastive Clustering's recipe (Li et al., AAAI 2021): ResNet-34, Adam 3e-4, batch 256, 1,000 epochs,
SimCLR augmentation with jitter strength s = 0.5. CC feeds 224×224 to an
ImageNet stem; here the CIFAR stem (3×3 conv, no max-pool) takes the native
32×32, which costs 49× fewer pixels per image. Not yet run to the end: the
accelerator time has not been available (benchmarks/notes/speed.md).

Beyond CC, the literature's settings, untuned here until an accelerator run
confirms them (so not enabled; this applies to every GPU config): SCAN's 20
neighbours mined once after the warm-up, its consistency term and a neighbour
as instance positive at weight 1 (`--config.loss.neighbor_consistency=1
--config.loss.neighbor_instance=1`), then self-labelling at threshold 0.99,
balanced, with Cutout views (`--config.train.selflabel_epochs=100`; SCAN
trains 200 epochs of it on CIFAR-10).
"""

from jcc.configs import default


def get_config():
  config = default.accelerator_schedule(default.get_config())
  config.dataset.name = 'cifar10'
  config.dataset.image_size = 32
  config.dataset.num_clusters = 10
  config.model.backbone = 'resnet34_cifar'
  return config
