"""Default configuration; every dataset config starts from it and overrides.

Fields and their meaning are documented inline. Override any of them on the
command line: ``--config.train.num_epochs=50``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Root of all randomness: init, data order (a function of seed and epoch),
  # augmentation keys (fold_in(seed, step)) and k-means.
  config.seed = 0

  config.dataset = dataset = ml_collections.ConfigDict()
  # Registry name (jcc.data.DATASETS): 'digits' (scikit-learn's bundled 8×8
  # digits, no download), 'npz' (a file with uint8 `images` and optional
  # `labels`), 'folder' (DIR/<class>/…/*.jpg gives labels, images at any
  # depth below a class folder; a flat DIR none),
  # the TFDS benchmarks 'cifar10', 'cifar100' (20 superclasses), 'stl10',
  # 'mnist', 'fashion_mnist', the ILSVRC2012 subsets 'imagenet10' and
  # 'imagenet_dogs', and 'tiny_imagenet' (its official folder layout).
  dataset.name = 'digits'
  # File or folder for sources that read one: 'npz' and 'folder'; the
  # tiny-imagenet-200 folder; an ILSVRC2012 train folder (DIR/<wnid>/) for
  # the ImageNet subsets; a folder of IDX files for MNIST-like sets. '' means
  # TFDS where the dataset has a builder.
  dataset.path = ''
  # TFDS: the data_dir holding prepared datasets ('' = ~/tensorflow_datasets),
  # whether to download and prepare a missing one, and the folder of files
  # downloaded by hand (imagenet2012's tar files).
  dataset.tfds_data_dir = ''
  dataset.tfds_download = False
  dataset.manual_dir = ''
  # STL-10: also train the instance objective on its 100,000 unlabelled
  # images (they take no part in clustering or evaluation), as CC does.
  dataset.use_unlabelled = True
  # Image files (folders, and --mode=predict's input): skip unreadable or
  # truncated ones with a warning that lists them (True), or stop with an
  # error that lists them (False).
  dataset.skip_bad_images = True
  # Read the images from disk as the batches need them (folders of image
  # files, tiny_imagenet, and sets written by python -m jcc.convert), so
  # memory does not grow with their number. True streams them; False keeps
  # them in memory, which is fastest, and stops with an error where they
  # would take over half this machine's memory. Unset (None), they are kept
  # in memory where they fit that budget, and streamed with a warning where
  # they do not.
  dataset.stream = config_dict.placeholder(bool)
  # Images are resized to image_size × image_size before training.
  dataset.image_size = 8
  # Training views are cut from the images held at crop_from_size ×
  # crop_from_size and resized to image_size, as torchvision's
  # RandomResizedCrop(image_size) cuts them from the original; 0 cuts them
  # from the image_size images. Arrays and .npz files are never made larger
  # for it (image files are decoded at both sizes). Costs (crop_from_size /
  # image_size)² more host memory and input bandwidth; evaluation and
  # predict still see image_size.
  dataset.crop_from_size = 0
  # K: the number of clusters (cluster-head outputs and DEC centroids).
  dataset.num_clusters = 10

  config.model = model = ml_collections.ConfigDict()
  # 'convnet' (small images), 'resnet18_cifar' / 'resnet34_cifar' (3×3 stem,
  # no max-pool: 32×32 inputs), 'resnet18' / 'resnet34' (ImageNet stem).
  model.backbone = 'convnet'
  # Channel widths of the ConvNet's stages (each stage after the first halves
  # the resolution). Ignored by the ResNets.
  model.convnet_widths = (32, 64, 128)
  # Hidden width of both heads (CC: 512) and the instance projection's size.
  model.head_hidden = 512
  model.projection_dim = 128
  # BatchNorm after the heads' hidden layer (SimCLR v2, TCL); CC has none.
  model.head_batchnorm = False
  # Base width of the decoder's sub-pixel upsampling convolutions.
  model.decoder_width = 64

  config.augment = augment = ml_collections.ConfigDict()
  # Random resized crop: range of area fraction and of aspect ratio w/h.
  augment.crop_scale = (0.08, 1.0)
  augment.crop_ratio = (3 / 4, 4 / 3)
  # Probability of a horizontal flip (0 for digits and text).
  augment.flip_prob = 0.5
  # Random rotation and horizontal shear, each U[−x, x] degrees, about the
  # centre, after the crop (0 turns them off; for handwriting, where slant
  # and tilt are style rather than identity).
  augment.rotation = 0.0
  augment.shear = 0.0
  # Colour jitter (torchvision ranges): brightness, contrast and saturation
  # factors from U[1−x, 1+x], hue shift from U[−x, x]; 0 skips an operation.
  # SimCLR/CC use 0.8·s, 0.8·s, 0.8·s, 0.2·s with strength s = 0.5 for CIFAR
  # and Tiny-ImageNet, 1.0 for STL-10 and the ImageNet subsets.
  augment.brightness = 0.4
  augment.contrast = 0.4
  augment.saturation = 0.4
  augment.hue = 0.1
  # Probability that a view is jittered at all, and whether the four
  # operations run in a random order (SimCLR: 0.8, True).
  augment.jitter_prob = 0.8
  augment.jitter_random_order = True
  # Probability of converting a colour view to grayscale (SimCLR: 0.2).
  augment.grayscale_prob = 0.2
  # Probability of a Gaussian blur (CC: 0.5 for the ImageNet subsets, else
  # 0) and the range of its σ in pixels; the kernel is about a tenth of the
  # image's side (23 at 224).
  augment.blur_prob = 0.0
  augment.blur_sigma = (0.1, 2.0)
  # Standard deviation of added Gaussian pixel noise; 0 turns it off.
  augment.noise_stddev = 0.0

  config.loss = loss = ml_collections.ConfigDict()
  # Weights of the objectives; 0 removes a term from the computation, so
  # CC-only (reconstruction=kl=0) or IDEC-like (instance=cluster=entropy=0)
  # runs are just configs.
  loss.instance = 1.0  # NT-Xent between the two views' projections.
  loss.cluster = 1.0  # contrast of the cluster columns of the two views.
  loss.entropy = 1.0  # log K − H(cluster marginal), per view.
  # MSE of the decoder's reconstruction; 0 builds no decoder.
  loss.reconstruction = 1.0
  loss.kl = 0.1  # DEC's KL(P‖Q); only after the warm-up (γ = 0.1 in IDEC).
  # Beyond the paper, both after the warm-up: SCAN's consistency between an
  # image's and one of its nearest neighbours' cluster assignments, and the
  # neighbour as an extra positive of an instance contrast (ProPos, GCC; at
  # instance_temperature).
  loss.neighbor_consistency = 0.0
  loss.neighbor_instance = 0.0
  # Temperatures of the instance and the cluster contrast (CC: 0.5 and 1.0).
  loss.instance_temperature = 0.5
  loss.cluster_temperature = 1.0
  # Degrees of freedom of DEC's Student-t kernel.
  loss.alpha = 1.0

  # Several processes (hosts) as one run: every process runs the same
  # command with its own process_id (README: "Several hosts"). Unset (''/-1)
  # on all three and no JAX_COORDINATOR_ADDRESS: one process. Any set: JAX
  # detects the unset ones (SLURM, Open MPI, TPU pods: coordinator_address
  # ='auto' and nothing else).
  config.distributed = distributed = ml_collections.ConfigDict()
  distributed.coordinator_address = ''  # 'HOST:PORT' of process 0, or 'auto'
  distributed.num_processes = -1
  distributed.process_id = -1  # 0 … num_processes − 1
  # How long the processes wait for each other to start, and how long one
  # waits for a silent peer before it stops too (then the same commands
  # resume from the last complete checkpoint).
  distributed.initialization_timeout_seconds = 300
  distributed.peer_timeout_seconds = 60

  config.train = train = ml_collections.ConfigDict()
  # Global batch (split over all devices; must divide evenly).
  train.batch_size = 256
  train.num_epochs = 100
  # The fewest steps of the method (warm-up and joint training): a small
  # dataset, with few steps per epoch, trains a whole multiple of num_epochs
  # (warm-up and self-labelling epochs in proportion) to reach it. 0: none.
  train.min_steps = 1000
  # Dtype of the network's computation: 'float32', or 'bfloat16' on
  # accelerators. Parameters stay float32; losses and softmax are float32.
  train.compute_dtype = 'float32'
  # The optimizer: 'adam' (CC's recipe), 'adamw' (decoupled weight decay),
  # 'sgd' (with momentum: SimCLR's and SCAN's pretext recipe) or 'lars'.
  train.optimizer = 'adam'
  # Momentum of 'sgd' and 'lars' (unused by the Adams).
  train.momentum = 0.9
  # Weight decay of the kernels (not biases, BatchNorm or DEC's centroids);
  # for 'adam' an L2 term of the gradient, for the others decoupled.
  train.weight_decay = 0.0
  # The peak learning rate; constant (CC's recipe), or 'cosine': decayed to
  # 0 over the whole run; either after a linear ramp from 0 over the first
  # lr_warmup_epochs (not the method's warm-up, train.warmup_epochs).
  train.learning_rate = 3e-4
  train.lr_schedule = 'constant'
  train.lr_warmup_epochs = 0
  # A momentum encoder (MoCo, BYOL): a copy of the network whose weights
  # follow the trained ones as an exponential moving average with this
  # coefficient (m in θ' ← m·θ' + (1 − m)·θ, after each update); its
  # projections of each view, without gradient, are the keys the other
  # view's projections are contrasted with in the instance term. 0: none
  # (the two views contrast with each other, as in CC).
  train.momentum_encoder = 0.0
  # Epochs trained without the KL term before the centroids are initialised
  # by k-means on the embeddings of the whole training set.
  train.warmup_epochs = 20
  # The terms the warm-up trains: 'all' of the method's but KL (and the
  # neighbour terms), or 'instance' alone, a pretext stage as SCAN's: the
  # cluster, entropy and reconstruction terms then start after it.
  train.warmup_terms = 'all'
  # k-means restarts for the centroid initialisation (DEC: 20).
  train.kmeans_n_init = 20
  # Steps between recomputations of the target distribution P over the whole
  # training set, during joint training.
  train.target_update_every_steps = 100
  # Neighbours per image (SCAN: 20), mined in the embedding over the whole
  # training set at the end of the warm-up, and again every so many steps
  # (0: only then), when a neighbour term has a weight.
  train.num_neighbors = 20
  train.neighbor_update_every_steps = 0
  # Self-labelling (SCAN's last stage), after the num_epochs above: for so
  # many more epochs the method's terms (not the neighbour terms) train on
  # two strong views (the augmentation above, then a Cutout square of
  # selflabel_cutout of the side), and the cluster head's confident predictions on the plain images
  # (probability above the threshold) label both views, a cross-entropy of
  # weight selflabel_weight; balanced: each label weighted by the inverse
  # of its count. 0 epochs: no such stage.
  train.selflabel_epochs = 0
  train.selflabel_threshold = 0.99
  train.selflabel_weight = 1.0
  train.selflabel_cutout = 0.5
  train.selflabel_balance = True
  # False: the pseudo-labels are re-read from the head at every step (SCAN),
  # so the confident set grows with whatever the head leans to. True: they
  # are the head's confident predictions at the stage's start (evaluated on
  # the whole training set), fixed for the stage (as SPICE fixes its set).
  train.selflabel_fixed = False
  # Steps between progress lines and metric writes: the only host sync in the
  # step loop, so the host runs at most this many steps ahead.
  train.log_every_steps = 50
  # Steps between checkpoints (one is always written at the end); how many
  # to keep.
  train.checkpoint_every_steps = 500
  train.max_checkpoints = 3
  # Batch size of the forward passes over the whole dataset (evaluation,
  # centroid initialisation, target refresh).
  train.eval_batch_size = 1024
  # Steps between evaluations during training (cluster-head and DEC metrics
  # to the logs, TensorBoard and metrics.jsonl); 0: only the final one.
  train.eval_every_steps = 0
  # Resuming a workdir with other training settings (batch, learning rate,
  # seed, augmentation, loss weights, …) is refused, naming them: it would no
  # longer be the same run. True continues it with the new settings.
  # Logging, checkpoint and evaluation intervals, data paths and the epoch
  # counts may always change (a longer num_epochs continues training).
  train.accept_changed_settings = False

  config.predict = predict = ml_collections.ConfigDict()
  # --mode=predict: a folder of images (flat or with class subfolders) or an
  # .npz whose images are assigned to the trained clusters.
  predict.input = ''
  # The folder --mode=predict writes predictions.csv and embeddings.npy to
  # ('': the workdir; another folder lets a read-only model folder be used).
  predict.output = ''
  return config


# The fields of the stages and parts beyond the paper (neighbour terms,
# self-labelling, a momentum encoder), at the values that switch them off.
BEYOND_PAPER_OFF = {'loss.neighbor_consistency': 0.0,
                    'loss.neighbor_instance': 0.0,
                    'train.selflabel_epochs': 0,
                    'train.momentum_encoder': 0.0,
                    'train.warmup_terms': 'all'}


def paper_method(config: ml_collections.ConfigDict
                 ) -> ml_collections.ConfigDict:
  """``config`` with every stage beyond the paper switched off."""
  for field, value in BEYOND_PAPER_OFF.items():
    group, leaf = field.split('.')
    config[group][leaf] = value
  return config


def set_jitter_strength(augment: ml_collections.ConfigDict, s: float) -> None:
  """SimCLR's colour jitter of strength s: 0.8·s, 0.8·s, 0.8·s, 0.2·s."""
  augment.brightness = augment.contrast = augment.saturation = 0.8 * s
  augment.hue = 0.2 * s


def handwriting(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The recipe of grayscale glyphs (digits, MNIST, Fashion-MNIST): crops
  that keep most of the glyph, no flip, brightness and contrast only, a
  small rotation and shear, pixel noise, a narrow ConvNet, entropy weight 2
  against collapse, Adam at 1e-3 (benchmarks/notes/configs.md has the runs that
  chose these values)."""
  config.model.backbone = 'convnet'
  config.model.convnet_widths = (16, 32, 64)
  config.model.decoder_width = 16
  config.augment.crop_scale = (0.5, 1.0)
  config.augment.flip_prob = 0.0  # a mirrored digit is another symbol
  config.augment.noise_stddev = 0.05
  # Slant and tilt are handwriting style, not identity: without these, the
  # clusters split 1s, 4s and 0s by slant. 10° of each beat 20° and 15° on
  # every seed.
  config.augment.rotation = 10.0
  config.augment.shear = 10.0
  # Grayscale: brightness then contrast on every view, nothing else.
  config.augment.jitter_prob = 1.0
  config.augment.jitter_random_order = False
  # Against collapse onto fewer clusters on small sets (CC's users raise
  # the entropy weight against collapse).
  config.loss.entropy = 2.0
  config.train.batch_size = 256
  # Higher than CC's 3e-4: short runs (3e-4 was worse on digits).
  config.train.learning_rate = 1e-3
  return config


def accelerator_schedule(config: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """CC's long schedule for the benchmark datasets on accelerators: 1,000
  epochs (100 of warm-up) in bfloat16."""
  config.train.num_epochs = 1000
  config.train.warmup_epochs = 100
  config.train.compute_dtype = 'bfloat16'
  return config


def simclr_optimizer(config: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
  """SimCLR's optimiser recipe in place of CC's Adam: SGD with momentum at
  0.1 for every 128 images of config.train.batch_size (set that first),
  weight decay 5e-4, a 5-epoch ramp then a cosine decay, instance
  temperature 0.2 and BatchNorm in the heads. On CIFAR-10 at 80 epochs it
  beat Adam on every seed (benchmarks/notes/cifar10.md); at batch 512 it
  is SCAN's pretext rate."""
  config.train.optimizer = 'sgd'
  config.train.learning_rate = 0.1 * config.train.batch_size / 128
  config.train.weight_decay = 5e-4
  config.train.lr_schedule = 'cosine'
  config.train.lr_warmup_epochs = 5
  config.loss.instance_temperature = 0.2
  config.model.head_batchnorm = True
  return config
