"""The clustering objectives as pure, jit-able functions of arrays.

Every function here:

* computes in float32 (or float64 when given float64 with x64 enabled) and
  returns a scalar or array of that dtype, whatever the input dtype
  (bfloat16 inputs are upcast first);
* works for any batch size and number of clusters (no fixed-size masks);
* stays finite, in value and gradient, for degenerate inputs: a zero
  embedding row, an empty cluster (a column of zeros), a collapsed assignment;
* accepts ``axis_name``: when given, the function is being called per device
  inside ``jax.shard_map`` (or ``jax.pmap``) over that mesh axis, each device
  holding an equal slice of the batch, and it returns the loss of the *whole
  global batch*, identical on every device. Contrastive negatives are gathered
  from all devices; marginals and means are summed across them. Under plain
  ``jax.jit`` on sharded global arrays no ``axis_name`` is needed: the arrays
  already are the global batch.

Formulas follow Contrastive Clustering (Li et al., AAAI 2021; its code where
the paper and code differ) and DEC/IDEC (Xie et al. 2016; Guo et al. 2017);
the neighbour and self-labelling terms follow SCAN (Van Gansbeke et al., ECCV
2020) and, for neighbours as contrastive positives, ProPos (Huang et al.,
TPAMI 2022) and GCC (Zhong et al., ICCV 2021); the momentum encoder's
contrast MoCo v3 (Chen et al., ICCV 2021).
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp

from jcc import loss_arrays

Array = jax.Array
AxisName = Hashable | None

# The floor that keeps logs and divisions finite on degenerate inputs, far
# below any value a real (non-degenerate) input produces.
_PROB_EPS = 1e-12
# x / max(‖x‖, eps), one of this module's functions too (the model's
# projections are normalised by it).
l2_normalize = loss_arrays.l2_normalize


def _xlogx(p: Array) -> Array:
  """p·log p, 0 at p = 0, with a finite (large negative) gradient there."""
  return p * jnp.log(jnp.maximum(p, _PROB_EPS))


def _paired_cross_entropy(logits: Array, row_ids: Array, n: int) -> Array:
  """Sum over rows of the paired-view cross-entropy.

  ``logits`` is (R, 2n): R rows against all 2n candidates (n of view a, then n
  of view b). ``row_ids`` gives each row's own index in [0, 2n). A row's
  positive is its counterpart in the other view (index ± n); its own column is
  excluded; every other column is a negative.
  """
  cols = jnp.arange(2 * n)
  logits = jnp.where(cols[None, :] == row_ids[:, None], -jnp.inf, logits)
  positive_ids = (row_ids + n) % (2 * n)
  positive = jnp.take_along_axis(logits, positive_ids[:, None], axis=1)[:, 0]
  return jnp.sum(jax.nn.logsumexp(logits, axis=1) - positive)


def instance_contrastive_loss(
    z_a: Array,
    z_b: Array,
    temperature: float = 0.5,
    axis_name: AxisName = None,
    normalized: bool = False,
) -> Array:
  r"""NT-Xent between two views of a batch (SimCLR; CC's instance loss).

  Rows are L2-normalised, the views stacked into 2B rows z, and
  s_ij = z_i·z_j / τ. With pos(i) the other view of the same image,

    L = 1/(2B) Σ_i [ −s_{i,pos(i)} + log Σ_{j≠i} exp(s_ij) ],

  i.e. the positive against the 2B−2 other rows as negatives.

  Args:
    z_a: (B, d) projections of view a. Any float dtype.
    z_b: (B, d) projections of view b, row i the same image as in ``z_a``.
    temperature: τ (CC uses 0.5).
    axis_name: mesh axis when called per device (see the module docstring);
      each device's rows are contrasted against all devices' rows.
    normalized: True when the rows are unit vectors already (jcc's model
      outputs them so): the normalisation is then skipped.

  Returns:
    A float32 scalar: the mean over all 2B (global) rows.
  """
  z_a, z_b, all_a, all_b, offset = loss_arrays.paired_rows(
      z_a, z_b, ('z_a', 'z_b'), normalized, axis_name)
  local_n, n = z_a.shape[0], all_a.shape[0]
  rows = jnp.concatenate([z_a, z_b], axis=0)
  if axis_name is None:
    logits = loss_arrays.gram(rows) / temperature
  else:
    cols = jnp.concatenate([all_a, all_b], axis=0)
    logits = jnp.matmul(
        rows, cols.T, precision=jax.lax.Precision.HIGHEST) / temperature
  local_ids = jnp.arange(local_n) + offset
  row_ids = jnp.concatenate([local_ids, local_ids + n])
  total = loss_arrays.psum(_paired_cross_entropy(logits, row_ids, n), axis_name)
  return total / (2 * n)


def cluster_contrastive_loss(
    c_a: Array,
    c_b: Array,
    temperature: float = 1.0,
    axis_name: AxisName = None,
) -> Array:
  r"""Contrast of the cluster columns of two views (CC's cluster loss).

  Each of the K columns of the (B, K) soft assignments is a cluster's
  representation. Stack the columns of both views into 2K vectors y,
  s_kl = cos(y_k, y_l) / τ, and with pos(k) the same cluster in the other view,

    L = 1/(2K) Σ_k [ −s_{k,pos(k)} + log Σ_{l≠k} exp(s_kl) ].

  The entropy regulariser is separate: see :func:`cluster_entropy`.

  Args:
    c_a: (B, K) soft assignments of view a (rows are distributions).
    c_b: (B, K) soft assignments of view b.
    temperature: τ (CC uses 1.0).
    axis_name: mesh axis when called per device; the columns then span all
      devices' rows (their dot products are summed across devices).

  Returns:
    A float32 scalar: the mean over the 2K rows.
  """
  c_a, c_b = loss_arrays.upcast(c_a, c_b)
  if c_a.shape != c_b.shape or c_a.ndim != 2:
    raise ValueError(
        f'c_a and c_b must both be (B, K); got {c_a.shape} and {c_b.shape}.')
  k = c_a.shape[1]
  y = jnp.concatenate([c_a, c_b], axis=1)  # (B, 2K): column = cluster
  gram = loss_arrays.psum(loss_arrays.gram(y.T), axis_name)
  inv_norm = jax.lax.rsqrt(
      jnp.maximum(jnp.diagonal(gram), loss_arrays.NORM_EPS**2))
  logits = gram * inv_norm[:, None] * inv_norm[None, :] / temperature
  return _paired_cross_entropy(logits, jnp.arange(2 * k), k) / (2 * k)


def cluster_entropy(c: Array, axis_name: AxisName = None) -> Array:
  r"""Negative entropy of the batch's cluster marginal, shifted to be ≥ 0.

  With p = Σ_i c_i / Σ_ik c_ik (the marginal over the batch),

    L = log K + Σ_k p_k log p_k = log K − H(p),

  which is 0 for a balanced marginal and log K for a collapsed one. CC adds it
  for each view, so no cluster empties.

  Args:
    c: (B, K) soft assignments.
    axis_name: mesh axis when called per device; the marginal is summed over
      all devices' rows.

  Returns:
    A float32 scalar in [0, log K].
  """
  (c,) = loss_arrays.upcast(c)
  if c.ndim != 2:
    raise ValueError(f'c must be (B, K); got shape {c.shape}.')
  mass = loss_arrays.psum(jnp.sum(c, axis=0), axis_name)
  p = mass / jnp.maximum(jnp.sum(mass), _PROB_EPS)
  return jnp.log(jnp.asarray(c.shape[1], p.dtype)) + jnp.sum(_xlogx(p))


def reconstruction_loss(
    x: Array, x_hat: Array, axis_name: AxisName = None) -> Array:
  r"""Mean squared error over all elements (IDEC's reconstruction term).

    L = 1/N Σ_n (x_n − x̂_n)²

  Args:
    x: the input, any shape.
    x_hat: the reconstruction, same shape.
    axis_name: mesh axis when called per device (equal slices); the mean is
      then taken over the global batch.

  Returns:
    A float32 scalar.
  """
  x, x_hat = loss_arrays.upcast(x, x_hat)
  if x.shape != x_hat.shape:
    raise ValueError(
        f'x and x_hat must have the same shape; got {x.shape} and '
        f'{x_hat.shape}.')
  return loss_arrays.pmean(jnp.mean(jnp.square(x - x_hat)), axis_name)


def student_t_assignment(
    e: Array, centroids: Array, alpha: float = 1.0) -> Array:
  r"""DEC's soft assignment of embeddings to centroids (Student's t kernel).

    q_ij = (1 + ‖e_i − μ_j‖²/α)^(−(α+1)/2) / Σ_j' (1 + ‖e_i − μ_j'‖²/α)^(−(α+1)/2)

  Computed in log space, so rows sum to 1 even for far-away embeddings.

  Args:
    e: (B, d) embeddings.
    centroids: (K, d) cluster centres μ.
    alpha: degrees of freedom α of the Student's t kernel (DEC uses 1).

  Returns:
    (B, K) float32 soft assignments; each row sums to 1.
  """
  e, centroids = loss_arrays.upcast(e, centroids)
  if e.ndim != 2 or centroids.ndim != 2 or e.shape[1] != centroids.shape[1]:
    raise ValueError(
        f'e must be (B, d) and centroids (K, d); got {e.shape} and '
        f'{centroids.shape}.')
  sq_dist = jnp.sum(jnp.square(e[:, None, :] - centroids[None, :, :]), axis=-1)
  log_kernel = -(alpha + 1.0) / 2.0 * jnp.log1p(sq_dist / alpha)
  return jax.nn.softmax(log_kernel, axis=1)


def target_distribution(q: Array, axis_name: AxisName = None,
                        frequency: Array | None = None) -> Array:
  r"""DEC's sharpened target distribution P from soft assignments Q.

    p_ij = (q_ij² / f_j) / Σ_j' (q_ij'² / f_j'),   f_j = Σ_i q_ij

  It is a target: no gradient flows through it.

  Args:
    q: (N, K) soft assignments, usually of the whole dataset.
    axis_name: mesh axis when called per device; the cluster frequencies f
      are then summed over all devices' rows.
    frequency: (K,) f, where ``q`` is a share of the rows and f was summed
      over all of them (by the processes that hold the others); default:
      summed over ``q``'s rows (and ``axis_name``'s devices).

  Returns:
    (N, K) float32; each row sums to 1.
  """
  (q,) = loss_arrays.upcast(jax.lax.stop_gradient(q))
  if q.ndim != 2:
    raise ValueError(f'q must be (N, K); got shape {q.shape}.')
  if frequency is None:
    frequency = loss_arrays.psum(jnp.sum(q, axis=0), axis_name)
  weight = jnp.square(q) / jnp.maximum(frequency, _PROB_EPS)
  return weight / jnp.maximum(
      jnp.sum(weight, axis=1, keepdims=True), _PROB_EPS)


def kl_clustering_loss(p: Array, q: Array, axis_name: AxisName = None) -> Array:
  r"""KL(P ‖ Q) per sample, averaged over samples (DEC's clustering loss).

    L = 1/N Σ_i Σ_j p_ij log(p_ij / q_ij)

  Terms with p_ij = 0 contribute 0; q is floored at a tiny value so an
  assignment of exactly 0 stays finite.

  Args:
    p: (N, K) target distribution. Gradients flow to both arguments; pass
      :func:`target_distribution`'s output, which is already a constant.
    q: (N, K) soft assignments.
    axis_name: mesh axis when called per device (equal slices); the mean is
      then over the global batch.

  Returns:
    A float32 scalar ≥ 0.
  """
  p, q = loss_arrays.upcast(p, q)
  if p.shape != q.shape or p.ndim != 2:
    raise ValueError(
        f'p and q must both be (N, K); got {p.shape} and {q.shape}.')
  per_sample = jnp.sum(
      _xlogx(p) - p * jnp.log(jnp.maximum(q, _PROB_EPS)), axis=1)
  return loss_arrays.pmean(jnp.mean(per_sample), axis_name)


# ---------------------------------------------------------------------------
# Beyond CC: neighbours in the embedding as positives (SCAN, ProPos/GCC) and
# self-labelling on confident predictions (SCAN, TCL, SPICE).


def neighbor_consistency_loss(
    p: Array, p_neighbor: Array, axis_name: AxisName = None) -> Array:
  r"""SCAN's consistency: an image and its neighbour get the same cluster.

  With p_i the cluster probabilities of image i and p_n(i) those of one of
  its nearest neighbours in the embedding (Van Gansbeke et al., ECCV 2020),

    L = −1/B Σ_i log ⟨p_i, p_n(i)⟩,

  0 when both are the same one-hot vector. SCAN adds an entropy term against
  collapse; :func:`cluster_entropy` is that term here. The inner product is
  floored at a tiny value, so orthogonal assignments stay finite.

  Args:
    p: (B, K) cluster probabilities (rows are distributions).
    p_neighbor: (B, K) the neighbours' probabilities, row i for image i's.
    axis_name: mesh axis when called per device (equal slices); the mean is
      then over the global batch.

  Returns:
    A float32 scalar ≥ 0.
  """
  p, p_neighbor = loss_arrays.upcast(p, p_neighbor)
  if p.shape != p_neighbor.shape or p.ndim != 2:
    raise ValueError(f'p and p_neighbor must both be (B, K); got {p.shape} '
                     f'and {p_neighbor.shape}.')
  agreement = jnp.sum(p * p_neighbor, axis=1)
  return loss_arrays.pmean(
      -jnp.mean(jnp.log(jnp.maximum(agreement, _PROB_EPS))), axis_name)


def neighbor_instance_loss(
    z: Array,
    z_neighbor: Array,
    temperature: float = 0.5,
    axis_name: AxisName = None,
    normalized: bool = False,
) -> Array:
  r"""InfoNCE with a neighbour as the positive (ProPos, GCC style).

  Rows are L2-normalised; s_ij = z_i·z'_j / τ between the batch z and the
  batch z' of its neighbours (row i of z' is a neighbour of image i). Each
  image's positive is its neighbour, the other B−1 neighbours are its
  negatives, and symmetrically for the neighbours:

    L = 1/(2B) Σ_i [ −2 s_ii + log Σ_j exp(s_ij) + log Σ_j exp(s_ji) ].

  Args:
    z: (B, d) projections of the images.
    z_neighbor: (B, d) projections of their neighbours.
    temperature: τ.
    axis_name: mesh axis when called per device; each device's rows are
      contrasted against all devices' rows.
    normalized: True when the rows are unit vectors already.

  Returns:
    A float32 scalar: the mean over the 2B (global) rows.
  """
  z, z_neighbor, all_z, all_neighbor, offset = loss_arrays.paired_rows(
      z, z_neighbor, ('z', 'z_neighbor'), normalized, axis_name)
  total = (_info_nce_sum(z, all_neighbor, offset, temperature) +
           _info_nce_sum(z_neighbor, all_z, offset, temperature))
  return loss_arrays.psum(total, axis_name) / (2 * all_z.shape[0])


def momentum_contrastive_loss(
    queries: Array,
    keys: Array,
    temperature: float = 0.5,
    axis_name: AxisName = None,
    normalized: bool = False,
) -> Array:
  r"""InfoNCE of queries against a momentum encoder's keys (MoCo v3).

  Rows are L2-normalised; s_ij = q_i·k_j / τ between the queries q (one
  view, from the trained network) and the keys k (the other view of the
  same images, from the momentum encoder). Each query's positive is its
  own image's key, the other B−1 keys are its negatives:

    L = 1/B Σ_i [ −s_ii + log Σ_j exp(s_ij) ].

  No gradient flows through ``keys``.

  Args:
    queries: (B, d) projections of one view.
    keys: (B, d) projections of the other view, row i the same image.
    temperature: τ.
    axis_name: mesh axis when called per device; each device's queries are
      contrasted against all devices' keys.
    normalized: True when the rows are unit vectors already.

  Returns:
    A float32 scalar: the mean over the B (global) queries.
  """
  queries, keys, _, all_keys, offset = loss_arrays.paired_rows(
      queries, jax.lax.stop_gradient(keys), ('queries', 'keys'), normalized,
      axis_name)
  total = _info_nce_sum(queries, all_keys, offset, temperature)
  return loss_arrays.psum(total, axis_name) / all_keys.shape[0]


def _info_nce_sum(rows: Array, cols: Array, offset: Array | int,
                  temperature: float) -> Array:
  """Σ_i [log Σ_j exp(s_ij) − s_i,i+offset], s = rows·colsᵀ / τ: row i's
  positive is column offset + i, every other column a negative."""
  logits = jnp.matmul(rows, cols.T,
                      precision=jax.lax.Precision.HIGHEST) / temperature
  own = jnp.arange(rows.shape[0]) + offset
  positive = jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]
  return jnp.sum(jax.nn.logsumexp(logits, axis=1) - positive)


def self_labeling_loss(
    p_weak: Array,
    p_strong: Array,
    threshold: float = 0.99,
    balance: bool = True,
    axis_name: AxisName = None,
) -> Array:
  r"""Cross-entropy on confident pseudo-labels (SCAN's self-labelling step).

  The weakly augmented view labels an image y_i = argmax_k p^w_ik when it is
  confident, m_i = [max_k p^w_ik > threshold]; the strongly augmented view
  is trained to predict that label. With balancing, each label is weighted
  by w_c = M / M_c (M confident images, M_c of them labelled c), so that
  large clusters do not swallow small ones:

    L = Σ_i m_i w_{y_i} (−log p^s_{i,y_i}) / Σ_i m_i w_{y_i},

  and 0 when no image is confident. No gradient flows through ``p_weak``.

  Args:
    p_weak: (B, K) probabilities of the weakly augmented view.
    p_strong: (B, K) probabilities of the strongly augmented view.
    threshold: the confidence a pseudo-label needs (SCAN: 0.99).
    balance: weight labels by inverse frequency (SCAN does).
    axis_name: mesh axis when called per device; confident images and label
      counts are then those of the global batch.

  Returns:
    A float32 scalar ≥ 0.
  """
  p_weak, p_strong = loss_arrays.upcast(jax.lax.stop_gradient(p_weak), p_strong)
  if p_weak.shape != p_strong.shape or p_weak.ndim != 2:
    raise ValueError(f'p_weak and p_strong must both be (B, K); got '
                     f'{p_weak.shape} and {p_strong.shape}.')
  k = p_weak.shape[1]
  confident = (jnp.max(p_weak, axis=1) > threshold).astype(p_weak.dtype)
  labels = jnp.argmax(p_weak, axis=1)
  one_hot = jax.nn.one_hot(labels, k, dtype=p_weak.dtype) * confident[:, None]
  if balance:
    counts = loss_arrays.psum(jnp.sum(one_hot, axis=0), axis_name)
    class_weight = jnp.where(counts > 0, jnp.sum(counts) /
                             jnp.maximum(counts, 1.0), 0.0)
  else:
    class_weight = jnp.ones((k,), p_weak.dtype)
  weight = one_hot @ class_weight  # w_{y_i} m_i
  nll = -jnp.log(jnp.maximum(
      jnp.take_along_axis(p_strong, labels[:, None], axis=1)[:, 0], _PROB_EPS))
  numerator = loss_arrays.psum(jnp.sum(weight * nll), axis_name)
  denominator = loss_arrays.psum(jnp.sum(weight), axis_name)
  return numerator / jnp.maximum(denominator, _PROB_EPS)
