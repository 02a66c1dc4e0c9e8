"""jcc.losses against independent float64 NumPy implementations."""

import jax
import jax.numpy as jnp
from jax import test_util as jtu
from jax.sharding import AxisType, PartitionSpec as P
import numpy as np
import pytest

from jcc import losses
from tests.conftest import SHARDED_DEVICES, devices

TOL = dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Independent references (float64 NumPy, written from the formulas, with loops
# over rows where that is the clearest statement of the formula).


def _np_logsumexp(x):
  m = np.max(x)
  return m + np.log(np.sum(np.exp(x - m)))


def _np_paired_ce(sim):
  """Mean over rows of -sim[i, pos] + log sum_{j != i} exp(sim[i, j])."""
  two_n = sim.shape[0]
  n = two_n // 2
  total = 0.0
  for i in range(two_n):
    pos = i + n if i < n else i - n
    others = np.delete(sim[i], i)
    total += -sim[i, pos] + _np_logsumexp(others)
  return total / two_n


def np_instance(z_a, z_b, tau):
  z = np.concatenate([z_a, z_b]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  return _np_paired_ce(z @ z.T / tau)


def np_cluster(c_a, c_b, tau):
  y = np.concatenate([c_a.T, c_b.T]).astype(np.float64)  # (2K, B)
  y = y / np.linalg.norm(y, axis=1, keepdims=True)
  return _np_paired_ce(y @ y.T / tau)


def np_entropy(c):
  c = c.astype(np.float64)
  p = c.sum(0) / c.sum()
  return np.log(c.shape[1]) + np.sum(p * np.log(p))


def np_student_t(e, mu, alpha):
  e, mu = e.astype(np.float64), mu.astype(np.float64)
  q = np.zeros((len(e), len(mu)))
  for i in range(len(e)):
    for j in range(len(mu)):
      q[i, j] = (1 + np.sum((e[i] - mu[j]) ** 2) / alpha) ** (-(alpha + 1) / 2)
  return q / q.sum(1, keepdims=True)


def np_target(q):
  q = q.astype(np.float64)
  w = q**2 / q.sum(0)
  return w / w.sum(1, keepdims=True)


def np_kl(p, q):
  p, q = p.astype(np.float64), q.astype(np.float64)
  return np.mean(np.sum(p * np.log(p / q), axis=1))


def _softmax_rows(rng, b, k, scale=2.0):
  logits = rng.normal(size=(b, k)) * scale
  c = np.exp(logits - logits.max(1, keepdims=True))
  return (c / c.sum(1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------
# Against the references.


@pytest.mark.parametrize('b,d', [(2, 3), (7, 16), (64, 128), (512, 128)])
@pytest.mark.parametrize('tau', [0.5, 0.1])
def test_instance_matches_reference(b, d, tau):
  rng = np.random.default_rng(b * d)
  z_a = rng.normal(size=(b, d)).astype(np.float32)
  z_b = rng.normal(size=(b, d)).astype(np.float32)
  got = jax.jit(losses.instance_contrastive_loss, static_argnums=2)(
      z_a, z_b, tau)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_instance(z_a, z_b, tau), **TOL)


def test_instance_on_normalized_rows_skips_only_the_normalisation():
  rng = np.random.default_rng(3)
  z_a, z_b = rng.normal(size=(2, 16, 8)).astype(np.float32)
  unit_a, unit_b = losses.l2_normalize(z_a), losses.l2_normalize(z_b)
  np.testing.assert_allclose(
      losses.instance_contrastive_loss(unit_a, unit_b, normalized=True),
      np_instance(z_a, z_b, 0.5), **TOL)
  # Told so wrongly, unnormalised rows give another value.
  assert not np.isclose(
      losses.instance_contrastive_loss(z_a, z_b, normalized=True),
      np_instance(z_a, z_b, 0.5))


@pytest.mark.parametrize('b,k', [(2, 2), (16, 10), (256, 20), (512, 200)])
@pytest.mark.parametrize('tau', [1.0, 0.5])
def test_cluster_matches_reference(b, k, tau):
  rng = np.random.default_rng(b + k)
  c_a, c_b = _softmax_rows(rng, b, k), _softmax_rows(rng, b, k)
  got = jax.jit(losses.cluster_contrastive_loss, static_argnums=2)(
      c_a, c_b, tau)
  np.testing.assert_allclose(got, np_cluster(c_a, c_b, tau), **TOL)


@pytest.mark.parametrize('b,k', [(2, 2), (16, 10), (512, 200)])
def test_entropy_matches_reference(b, k):
  c = _softmax_rows(np.random.default_rng(k), b, k)
  np.testing.assert_allclose(losses.cluster_entropy(c), np_entropy(c), **TOL)


def test_reconstruction_matches_reference():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(5, 8, 8, 3)).astype(np.float32)
  x_hat = rng.uniform(size=(5, 8, 8, 3)).astype(np.float32)
  want = np.mean((x.astype(np.float64) - x_hat) ** 2)
  np.testing.assert_allclose(losses.reconstruction_loss(x, x_hat), want, **TOL)


@pytest.mark.parametrize('b,k,d', [(2, 2, 3), (33, 10, 16), (512, 200, 8)])
@pytest.mark.parametrize('alpha', [1.0, 3.0])
def test_student_t_matches_reference(b, k, d, alpha):
  rng = np.random.default_rng(b + k + d)
  e = rng.normal(size=(b, d)).astype(np.float32)
  mu = rng.normal(size=(k, d)).astype(np.float32)
  q = losses.student_t_assignment(e, mu, alpha)
  np.testing.assert_allclose(q, np_student_t(e, mu, alpha), **TOL)
  np.testing.assert_allclose(q.sum(1), 1.0, **TOL)


@pytest.mark.parametrize('n,k', [(2, 2), (100, 10), (512, 200)])
def test_target_and_kl_match_reference(n, k):
  rng = np.random.default_rng(n * k)
  q = _softmax_rows(rng, n, k)
  p = losses.target_distribution(q)
  np.testing.assert_allclose(p, np_target(q), **TOL)
  np.testing.assert_allclose(p.sum(1), 1.0, **TOL)
  q2 = _softmax_rows(rng, n, k)
  np.testing.assert_allclose(
      losses.kl_clustering_loss(p, q2), np_kl(np.asarray(p), q2), **TOL)


# ---------------------------------------------------------------------------
# Known values.


@pytest.mark.parametrize('b', [2, 5, 64])
def test_instance_uniform_similarity_gives_log_2b_minus_1(b):
  z = np.ones((b, 4), np.float32)  # every pair has cosine 1: all logits equal
  got = losses.instance_contrastive_loss(z, z)
  np.testing.assert_allclose(got, np.log(2 * b - 1), **TOL)


@pytest.mark.parametrize('b', [2, 8, 32])
def test_instance_identical_orthogonal_views_reach_the_minimum(b):
  tau = 0.5
  rng = np.random.default_rng(b)
  z = np.eye(b, dtype=np.float32)
  orthogonal = losses.instance_contrastive_loss(z, z, tau)
  # Positive logit 1/τ, 2B−2 negatives at 0.
  want = -1 / tau + np.log(np.exp(1 / tau) + 2 * b - 2)
  np.testing.assert_allclose(orthogonal, want, **TOL)
  # It is the minimum over embeddings with non-negative similarities (the
  # output of a ReLU, say): identical views, no negative pulled closer.
  for _ in range(5):
    other = np.abs(rng.normal(size=(b, b))).astype(np.float32)
    assert losses.instance_contrastive_loss(other, other, tau) >= orthogonal
    noisy = other + 0.1 * np.abs(rng.normal(size=other.shape))
    assert losses.instance_contrastive_loss(other, noisy, tau) >= orthogonal
  # Over all embeddings, the regular simplex (cosine −1/(B−1) between
  # images) is the minimum; no random pair of views goes below it.
  simplex = z - z.mean(0)
  best = losses.instance_contrastive_loss(simplex, simplex, tau)
  want = -1 / tau + np.log(np.exp(1 / tau) + (2 * b - 2) *
                           np.exp(-1 / (tau * (b - 1))))
  np.testing.assert_allclose(best, want, **TOL)
  for _ in range(5):
    z_a = rng.normal(size=(b, b)).astype(np.float32)
    z_b = z_a + 0.1 * rng.normal(size=z_a.shape).astype(np.float32)
    assert losses.instance_contrastive_loss(z_a, z_b, tau) >= best - 1e-6


@pytest.mark.parametrize('k', [2, 10])
def test_cluster_identical_one_hot_views_reach_the_minimum(k):
  c = np.eye(k, dtype=np.float32).repeat(3, axis=0)  # balanced, confident
  got = losses.cluster_contrastive_loss(c, c)
  want = -1.0 + np.log(np.e + 2 * k - 2)
  np.testing.assert_allclose(got, want, **TOL)
  np.testing.assert_allclose(losses.cluster_entropy(c), 0.0, atol=1e-6)


def test_entropy_of_collapsed_assignment_is_log_k():
  c = np.zeros((16, 7), np.float32)
  c[:, 3] = 1.0
  np.testing.assert_allclose(losses.cluster_entropy(c), np.log(7), **TOL)


def test_target_distribution_sharpens_and_blocks_gradient():
  q = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]], np.float32)
  p = losses.target_distribution(q)
  assert p[0, 0] > q[0, 0] and p[1, 1] > q[1, 1]
  grad = jax.grad(lambda q: jnp.sum(losses.target_distribution(q) ** 2))(q)
  np.testing.assert_array_equal(grad, 0.0)


def test_target_rows_of_a_share_from_the_summed_frequencies_are_the_whole():
  q = _softmax_rows(np.random.default_rng(2), 30, 4)
  whole = losses.target_distribution(q)
  frequency = q[:11].sum(0) + q[11:].sum(0)  # two processes' shares
  for share in (slice(0, 11), slice(11, 30)):
    np.testing.assert_allclose(
        losses.target_distribution(q[share], frequency=frequency),
        whole[share], rtol=1e-6)
  # Without the whole's frequencies a share's target differs.
  assert not np.allclose(losses.target_distribution(q[:11]), whole[:11])


def test_kl_of_identical_distributions_is_zero():
  q = _softmax_rows(np.random.default_rng(1), 20, 5)
  np.testing.assert_allclose(losses.kl_clustering_loss(q, q), 0.0, atol=1e-6)


# ---------------------------------------------------------------------------
# Symmetries.


def test_swapping_views_and_permuting_batch_leave_losses_unchanged():
  rng = np.random.default_rng(3)
  b, d, k = 24, 16, 6
  z_a, z_b = rng.normal(size=(2, b, d)).astype(np.float32)
  c_a, c_b = _softmax_rows(rng, b, k), _softmax_rows(rng, b, k)
  perm = rng.permutation(b)
  inst = losses.instance_contrastive_loss(z_a, z_b)
  clus = losses.cluster_contrastive_loss(c_a, c_b)
  for got in (losses.instance_contrastive_loss(z_b, z_a),
              losses.instance_contrastive_loss(z_a[perm], z_b[perm])):
    np.testing.assert_allclose(got, inst, **TOL)
  for got in (losses.cluster_contrastive_loss(c_b, c_a),
              losses.cluster_contrastive_loss(c_a[perm], c_b[perm])):
    np.testing.assert_allclose(got, clus, **TOL)
  np.testing.assert_allclose(
      losses.cluster_entropy(c_a[perm]), losses.cluster_entropy(c_a), **TOL)
  # Permuting the batch rows of a view pair that is *not* permuted together
  # breaks the positives: the loss must notice.
  assert abs(losses.instance_contrastive_loss(z_a[perm], z_b) - inst) > 1e-3


# ---------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize('order', [1, pytest.param(2, marks=pytest.mark.slow)])
def test_gradients_match_finite_differences(order):
  rng = np.random.default_rng(4)
  b, d, k = 6, 5, 4
  with jax.enable_x64(True):
    z_a, z_b = rng.normal(size=(2, b, d))
    c_a, c_b = (_softmax_rows(rng, b, k).astype(np.float64) for _ in range(2))
    e, mu = rng.normal(size=(b, d)), rng.normal(size=(k, d))
    p = np.asarray(losses.target_distribution(c_a))
    x, x_hat = rng.uniform(size=(2, b, d))
    def check(fn, args):
      jtu.check_grads(jax.jit(fn), args, order=order, modes=['fwd', 'rev'],
                      eps=1e-5)

    check(losses.instance_contrastive_loss, (z_a, z_b))
    check(losses.cluster_contrastive_loss, (c_a, c_b))
    check(losses.cluster_entropy, (c_a,))
    check(losses.reconstruction_loss, (x, x_hat))
    check(losses.student_t_assignment, (e, mu))
    check(lambda q: losses.kl_clustering_loss(p, q), (c_b,))


def test_float64_inputs_stay_float64_under_x64():
  with jax.enable_x64(True):
    z = np.ones((3, 2))
    assert losses.instance_contrastive_loss(z, z).dtype == jnp.float64


# ---------------------------------------------------------------------------
# Degenerate and low-precision inputs.


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def test_collapsed_assignment_and_zero_rows_are_finite():
  b, k, d = 8, 5, 4
  collapsed = np.zeros((b, k), np.float32)
  collapsed[:, 0] = 1.0  # clusters 1..4 are empty: zero columns
  zero_rows = np.zeros((b, d), np.float32)
  fns = {
      'instance': lambda z: losses.instance_contrastive_loss(z, z),
      'cluster': lambda c: losses.cluster_contrastive_loss(c, c),
      'entropy': losses.cluster_entropy,
      'kl': lambda c: losses.kl_clustering_loss(
          losses.target_distribution(c), c),
      'student_t': lambda e: jnp.sum(
          losses.student_t_assignment(e, jnp.zeros((k, d))) ** 2),
  }
  inputs = {'instance': zero_rows, 'cluster': collapsed, 'entropy': collapsed,
            'kl': collapsed, 'student_t': zero_rows}
  for name, fn in fns.items():
    value, grad = jax.value_and_grad(fn)(inputs[name])
    assert _all_finite((value, grad)), name
  all_zero = np.zeros((b, k), np.float32)
  for fn in (losses.cluster_entropy,
             lambda c: losses.cluster_contrastive_loss(c, c)):
    assert _all_finite(jax.value_and_grad(fn)(all_zero))


def test_bfloat16_inputs_give_finite_float32_results():
  rng = np.random.default_rng(5)
  b, d, k = 16, 8, 4
  z_a, z_b = jnp.asarray(rng.normal(size=(2, b, d)), jnp.bfloat16)
  c_a = jnp.asarray(_softmax_rows(rng, b, k), jnp.bfloat16)
  c_b = jnp.asarray(_softmax_rows(rng, b, k), jnp.bfloat16)
  cases = [
      (losses.instance_contrastive_loss, (z_a, z_b)),
      (losses.cluster_contrastive_loss, (c_a, c_b)),
      (losses.cluster_entropy, (c_a,)),
      (losses.reconstruction_loss, (z_a, z_b)),
      (lambda q: losses.kl_clustering_loss(losses.target_distribution(q), q),
       (c_a,)),
  ]
  for fn, args in cases:
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(
        *args)
    assert value.dtype == jnp.float32
    assert all(g.dtype == jnp.bfloat16 for g in grads)
    assert _all_finite((value, grads))
  # bfloat16 rounding of the inputs aside, the value is the float32 one.
  np.testing.assert_allclose(
      losses.instance_contrastive_loss(z_a, z_b),
      losses.instance_contrastive_loss(z_a.astype(jnp.float32),
                                       z_b.astype(jnp.float32)), rtol=1e-6)
  q = losses.student_t_assignment(z_a, z_b[:k])
  assert q.dtype == jnp.float32 and _all_finite(q)


def test_mismatched_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match='z_a and z_b'):
    losses.instance_contrastive_loss(np.ones((4, 3)), np.ones((5, 3)))
  with pytest.raises(ValueError, match='centroids'):
    losses.student_t_assignment(np.ones((4, 3)), np.ones((5, 2)))


# ---------------------------------------------------------------------------
# Per-device use inside shard_map equals the single-device global result.


def _mesh(count):
  return jax.sharding.Mesh(np.array(devices(count)), ('data',),
                           axis_types=(AxisType.Explicit,))


def _sharded(fn, n_args, out_spec=P(), count=2):
  """fn per device under shard_map, its inputs split on the batch."""
  mesh = _mesh(count)
  mapped = jax.jit(jax.shard_map(
      fn, mesh=mesh, in_specs=(P('data'),) * n_args, out_specs=out_spec))
  sharding = jax.sharding.NamedSharding(mesh, P('data'))
  return lambda *args: mapped(*(jax.device_put(a, sharding) for a in args))


@pytest.mark.parametrize('count', SHARDED_DEVICES)
def test_axis_name_under_shard_map_equals_global_batch(count):
  rng = np.random.default_rng(6)
  b, d, k = 32, 16, 5
  z_a, z_b = rng.normal(size=(2, b, d)).astype(np.float32)
  c_a, c_b = _softmax_rows(rng, b, k), _softmax_rows(rng, b, k)
  q = _softmax_rows(rng, b, k)
  ax = 'data'
  cases = [
      (lambda a, b: losses.instance_contrastive_loss(a, b, axis_name=ax),
       losses.instance_contrastive_loss, (z_a, z_b)),
      (lambda a, b: losses.cluster_contrastive_loss(a, b, axis_name=ax),
       losses.cluster_contrastive_loss, (c_a, c_b)),
      (lambda c: losses.cluster_entropy(c, axis_name=ax),
       losses.cluster_entropy, (c_a,)),
      (lambda a, b: losses.reconstruction_loss(a, b, axis_name=ax),
       losses.reconstruction_loss, (z_a, z_b)),
      (lambda p, q: losses.kl_clustering_loss(p, q, axis_name=ax),
       losses.kl_clustering_loss, (c_a, c_b)),
  ]
  for per_device, single, args in cases:
    got = _sharded(per_device, len(args), count=count)(*args)
    np.testing.assert_allclose(got, single(*args), **TOL)
    # Gradients per device are the slices of the global gradient.
    grad_fn = jax.grad(per_device, argnums=tuple(range(len(args))))
    got_grads = _sharded(grad_fn, len(args), (P('data'),) * len(args),
                         count)(*args)
    want_grads = jax.grad(single, argnums=tuple(range(len(args))))(*args)
    for g, w in zip(got_grads, want_grads):
      np.testing.assert_allclose(g, w, **TOL)
  got_p = _sharded(lambda q: losses.target_distribution(q, axis_name=ax), 1,
                   P('data'), count)(q)
  np.testing.assert_allclose(got_p, losses.target_distribution(q), **TOL)


@pytest.mark.parametrize('count', SHARDED_DEVICES)
def test_jit_on_sharded_global_arrays_needs_no_axis_name(count):
  mesh = _mesh(count)
  rng = np.random.default_rng(7)
  z_a, z_b = rng.normal(size=(2, 64, 8)).astype(np.float32)
  sharding = jax.sharding.NamedSharding(mesh, P('data'))
  got = jax.jit(losses.instance_contrastive_loss)(
      jax.device_put(z_a, sharding), jax.device_put(z_b, sharding))
  np.testing.assert_allclose(got, np_instance(z_a, z_b, 0.5), **TOL)
