"""The method's objective: its active loss terms on one step's outputs.

:func:`compute_loss_terms` gives each term of config.loss with a non-zero
weight, unweighted, from the model's outputs on the two views;
:func:`self_labeling_terms` the self-labelling stage's term. The formulas
are :mod:`jcc.losses`'; the weights and the phases they apply in are the
step's (:mod:`jcc.step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jcc import losses
from jcc import models


def compute_loss_terms(
    outputs: models.ModelOutputs,
    views: jax.Array,
    target: jax.Array,
    loss_config: ml_collections.ConfigDict,
    in_clusters: jax.Array | None = None,
    neighbor: models.ModelOutputs | None = None,
    momentum_keys: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """The active (non-zero weight) terms, unweighted, for a 2B batch of views.

  Rows [0, B) of ``outputs`` are view a, rows [B, 2B) view b of the same
  images; ``target`` is DEC's P for the B images. ``in_clusters`` (B,) bool
  limits the cluster, entropy and KL terms to the rows where it is True
  (the others train the instance objective alone); None: all rows.
  ``neighbor``: the outputs of a view of each image's neighbour (B rows),
  for the neighbour terms (on every row). ``momentum_keys`` (2B, d): the
  momentum encoder's projections of the same 2B views; with them, each
  view's projections are contrasted with the other view's keys
  (:func:`jcc.losses.momentum_contrastive_loss`) rather than with each other.
  """
  half = views.shape[0] // 2
  a = jax.tree.map(lambda x: x[:half], outputs)
  b = jax.tree.map(lambda x: x[half:], outputs)
  probs_a, probs_b, kl_scale = a.cluster_probs, b.cluster_probs, 1.0
  if in_clusters is not None:
    # A zero row adds nothing to the column dot products, the marginal's
    # mass or the KL sum; the KL mean is rescaled to the clustered rows.
    keep = in_clusters.astype(jnp.float32)[:, None]
    probs_a, probs_b, target = probs_a * keep, probs_b * keep, target * keep
    kl_scale = half / jnp.maximum(jnp.sum(keep), 1.0)
  terms = {}
  if loss_config.instance and momentum_keys is not None:
    terms['instance'] = 0.5 * (
        losses.momentum_contrastive_loss(
            a.projection, momentum_keys[half:],
            loss_config.instance_temperature, normalized=True) +
        losses.momentum_contrastive_loss(
            b.projection, momentum_keys[:half],
            loss_config.instance_temperature, normalized=True))
  elif loss_config.instance:
    terms['instance'] = losses.instance_contrastive_loss(
        a.projection, b.projection, loss_config.instance_temperature,
        normalized=True)
  if loss_config.cluster:
    terms['cluster'] = losses.cluster_contrastive_loss(
        probs_a, probs_b, loss_config.cluster_temperature)
  if loss_config.entropy:
    terms['entropy'] = (losses.cluster_entropy(probs_a) +
                        losses.cluster_entropy(probs_b))
  if loss_config.reconstruction:
    terms['reconstruction'] = losses.reconstruction_loss(
        views, outputs.reconstruction)
  if loss_config.kl:
    terms['kl'] = 0.5 * kl_scale * (
        losses.kl_clustering_loss(target, a.student_t) +
        losses.kl_clustering_loss(target, b.student_t))
  if loss_config.neighbor_consistency:
    terms['neighbor_consistency'] = 0.5 * (
        losses.neighbor_consistency_loss(a.cluster_probs,
                                         neighbor.cluster_probs) +
        losses.neighbor_consistency_loss(b.cluster_probs,
                                         neighbor.cluster_probs))
  if loss_config.neighbor_instance:
    terms['neighbor_instance'] = 0.5 * (
        losses.neighbor_instance_loss(
            a.projection, neighbor.projection,
            loss_config.instance_temperature, normalized=True) +
        losses.neighbor_instance_loss(
            b.projection, neighbor.projection,
            loss_config.instance_temperature, normalized=True))
  return terms


def self_labeling_terms(labelling_probs: jax.Array, view_probs: jax.Array,
                        train_config: ml_collections.ConfigDict,
                        in_clusters: jax.Array | None = None
                        ) -> dict[str, jax.Array]:
  """The self-labelling term of B images: ``labelling_probs`` (B, K) give
  the pseudo-labels (the plain images' predictions, or one-hot fixed
  labels), ``view_probs`` (2B, K) are the predictions on the two strong
  views (view a, then view b), each trained towards those labels.

  Rows where ``in_clusters`` is False give no label (they are not clustered).
  """
  num_images = labelling_probs.shape[0]
  if in_clusters is not None:
    labelling_probs = labelling_probs * in_clusters.astype(
        labelling_probs.dtype)[:, None]
  threshold = train_config.selflabel_threshold
  balance = train_config.selflabel_balance
  return {'self_labeling': 0.5 * sum(
      losses.self_labeling_loss(labelling_probs, strong, threshold, balance)
      for strong in (view_probs[:num_images], view_probs[num_images:]))}
