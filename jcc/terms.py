"""The method's vocabulary: its loss terms and the choices its config names.

One place for the names that the step computes, the config check accepts,
the checkpoints record and the tests and benchmarks use. No JAX at import.
"""

from __future__ import annotations

import ml_collections

# The weights in config.loss, one per term of the objective; 0 removes one.
LOSS_WEIGHTS = ('instance', 'cluster', 'entropy', 'reconstruction', 'kl',
                'neighbor_consistency', 'neighbor_instance')
# The terms that start after the warm-up (DEC's centroids and the
# neighbours are set at its end).
JOINT_TERMS = ('kl', 'neighbor_consistency', 'neighbor_instance')
# train.warmup_terms: the terms the warm-up trains besides JOINT_TERMS'
# absence; 'instance' defers the others to its end too.
WARMUP_TERMS = ('all', 'instance')
NEIGHBOR_TERMS = ('neighbor_consistency', 'neighbor_instance')
# The config fields that fix the model's variables, by the names that
# model_spec, the checkpoint signature and the saved model give them.
MODEL_FIELDS = {
    'backbone': 'model.backbone',
    'num_clusters': 'dataset.num_clusters',
    'image_size': 'dataset.image_size',
    'convnet_widths': 'model.convnet_widths',
    'head_hidden': 'model.head_hidden',
    'projection_dim': 'model.projection_dim',
    'decoder_width': 'model.decoder_width',
    'head_batchnorm': 'model.head_batchnorm',
}
# The value of a field that a config saved before it existed lacks: the one
# that builds the model that config was trained with.
# with_decoder (loss.reconstruction above 0) is a model spec key too: a
# version before it built the decoder always.
ABSENT_FIELD_VALUES = {'head_batchnorm': False, 'with_decoder': True}
COMPUTE_DTYPES = ('float32', 'bfloat16')
LR_SCHEDULES = ('constant', 'cosine')
OPTIMIZERS = ('adam', 'adamw', 'sgd', 'lars')


def terms_after_warmup(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The loss terms that count from the warm-up's end on: JOINT_TERMS, and
  with train.warmup_terms 'instance' every term but the instance one."""
  if config.train.get('warmup_terms', 'all') == 'instance':
    return tuple(name for name in LOSS_WEIGHTS if name != 'instance')
  return JOINT_TERMS


def uses_neighbors(config: ml_collections.ConfigDict) -> bool:
  """Whether a neighbour term has a weight (the run then mines neighbours,
  its joint step takes them and its checkpoints hold them)."""
  return any(config.loss[name] for name in NEIGHBOR_TERMS)
