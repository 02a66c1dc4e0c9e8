"""The neighbour and self-labelling objectives against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jcc import losses
from tests.conftest import SHARDED_DEVICES
from tests.test_losses import TOL, _sharded, _softmax_rows

# ---------------------------------------------------------------------------
# Independent references, written from the formulas with loops over rows.


def np_neighbor_consistency(p, q):
  p, q = p.astype(np.float64), q.astype(np.float64)
  return -np.mean([np.log(np.dot(p[i], q[i])) for i in range(len(p))])


def np_neighbor_instance(z, zn, tau):
  z = z.astype(np.float64) / np.linalg.norm(z, axis=1, keepdims=True)
  zn = zn.astype(np.float64) / np.linalg.norm(zn, axis=1, keepdims=True)
  b = len(z)
  total = 0.0
  for rows, cols in ((z, zn), (zn, z)):
    for i in range(b):
      s = np.array([rows[i] @ cols[j] / tau for j in range(b)])
      total += -s[i] + np.log(np.sum(np.exp(s)))
  return total / (2 * b)


def np_self_labeling(pw, ps, threshold, balance):
  pw, ps = pw.astype(np.float64), ps.astype(np.float64)
  confident = [i for i in range(len(pw)) if pw[i].max() > threshold]
  if not confident:
    return 0.0
  labels = {i: int(np.argmax(pw[i])) for i in confident}
  counts = {}
  for c in labels.values():
    counts[c] = counts.get(c, 0) + 1
  weight = {i: (len(confident) / counts[labels[i]] if balance else 1.0)
            for i in confident}
  num = sum(weight[i] * -np.log(ps[i, labels[i]]) for i in confident)
  return num / sum(weight.values())


# ---------------------------------------------------------------------------


@pytest.mark.parametrize('b,k', [(1, 2), (7, 3), (128, 10)])
def test_neighbor_consistency_matches_reference(b, k):
  rng = np.random.default_rng(b)
  p, q = _softmax_rows(rng, b, k), _softmax_rows(rng, b, k)
  np.testing.assert_allclose(losses.neighbor_consistency_loss(p, q),
                             np_neighbor_consistency(p, q), **TOL)


def test_neighbor_consistency_is_zero_for_equal_one_hots_and_finite_apart():
  eye = np.eye(4, dtype=np.float32)
  assert float(losses.neighbor_consistency_loss(eye, eye)) == pytest.approx(0)
  apart = losses.neighbor_consistency_loss(eye, np.roll(eye, 1, axis=0))
  grad = jax.grad(losses.neighbor_consistency_loss)(eye, np.roll(eye, 1, 0))
  assert np.isfinite(apart) and apart > 20  # −log of the floor
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('b,d', [(2, 3), (9, 16), (64, 32)])
@pytest.mark.parametrize('tau', [0.5, 0.1])
def test_neighbor_instance_matches_reference(b, d, tau):
  rng = np.random.default_rng(b * d)
  z, zn = rng.normal(size=(2, b, d)).astype(np.float32)
  np.testing.assert_allclose(losses.neighbor_instance_loss(z, zn, tau),
                             np_neighbor_instance(z, zn, tau), **TOL)
  unit = losses.l2_normalize(jnp.asarray(z)), losses.l2_normalize(
      jnp.asarray(zn))
  np.testing.assert_allclose(
      losses.neighbor_instance_loss(*unit, tau, normalized=True),
      np_neighbor_instance(z, zn, tau), **TOL)


def test_neighbor_instance_is_log_b_for_uniform_similarity():
  b = 6
  z = np.ones((b, 4), np.float32)
  np.testing.assert_allclose(losses.neighbor_instance_loss(z, z), np.log(b),
                             **TOL)


@pytest.mark.parametrize('threshold', [0.0, 0.5, 0.9, 0.999999])
@pytest.mark.parametrize('balance', [True, False])
def test_self_labeling_matches_reference(threshold, balance):
  rng = np.random.default_rng(3)
  pw = _softmax_rows(rng, 50, 5, scale=4.0)
  ps = _softmax_rows(rng, 50, 5)
  np.testing.assert_allclose(
      losses.self_labeling_loss(pw, ps, threshold, balance),
      np_self_labeling(pw, ps, threshold, balance), **TOL)


def test_self_labeling_trains_only_the_strong_view():
  rng = np.random.default_rng(4)
  pw, ps = _softmax_rows(rng, 20, 4, 5.0), _softmax_rows(rng, 20, 4)
  g_weak, g_strong = jax.grad(losses.self_labeling_loss, argnums=(0, 1))(
      pw, ps, 0.5)
  assert not np.any(g_weak) and np.any(g_strong)
  # Balancing: one confident image of a rare label counts as much as all
  # the confident images of a common one.
  pw = np.array([[0.99, 0.01]] * 9 + [[0.01, 0.99]], np.float32)
  ps = np.array([[0.5, 0.5]] * 9 + [[0.9, 0.1]], np.float32)
  balanced = float(losses.self_labeling_loss(pw, ps, 0.9))
  plain = float(losses.self_labeling_loss(pw, ps, 0.9, balance=False))
  np.testing.assert_allclose(balanced, (np.log(2) + np.log(10)) / 2, rtol=1e-5)
  np.testing.assert_allclose(plain, (9 * np.log(2) + np.log(10)) / 10,
                             rtol=1e-5)


@pytest.mark.parametrize('count', SHARDED_DEVICES)
def test_new_losses_under_shard_map_equal_the_global_batch(count):
  rng = np.random.default_rng(6)
  b, d, k = 32, 16, 5
  z, zn = rng.normal(size=(2, b, d)).astype(np.float32)
  p, q = _softmax_rows(rng, b, k, 4.0), _softmax_rows(rng, b, k)
  ax = 'data'
  cases = [
      (lambda a, c: losses.neighbor_consistency_loss(a, c, axis_name=ax),
       losses.neighbor_consistency_loss, (p, q)),
      (lambda a, c: losses.neighbor_instance_loss(a, c, axis_name=ax),
       losses.neighbor_instance_loss, (z, zn)),
      (lambda a, c: losses.self_labeling_loss(a, c, 0.6, axis_name=ax),
       lambda a, c: losses.self_labeling_loss(a, c, 0.6), (p, q)),
  ]
  for per_device, single, args in cases:
    got = _sharded(per_device, len(args), count=count)(*args)
    np.testing.assert_allclose(got, single(*args), **TOL)
    grad_fn = jax.grad(per_device, argnums=(1,))
    got_grads = _sharded(grad_fn, len(args), (P('data'),), count)(*args)
    want_grads = jax.grad(single, argnums=(1,))(*args)
    np.testing.assert_allclose(got_grads[0], want_grads[0], **TOL)


def test_mismatched_shapes_raise_clear_errors():
  for loss in (losses.neighbor_consistency_loss, losses.neighbor_instance_loss,
               losses.self_labeling_loss):
    with pytest.raises(ValueError, match='must both be'):
      loss(np.ones((4, 3), np.float32), np.ones((5, 3), np.float32))
