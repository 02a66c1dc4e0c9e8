"""The models' convolution: one matmul on tiny feature maps equals lax's."""

import functools
import re

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from jcc import conv
from jcc import inference
from jcc import models
from jcc.configs import digits

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax(x, kernel, padding):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=NHWC)


def _dense(x, kernel, padding):
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (1, 1),
                                  padding)
  return conv.dense_conv(x, kernel, tuple(map(tuple, padding)))


@pytest.mark.parametrize('size,kernel_size,padding', [
    ((1, 1), (3, 3), 'SAME'), ((2, 2), (3, 3), 'SAME'),
    ((3, 3), (3, 3), 'SAME'), ((2, 3), (3, 3), 'SAME'),
    ((3, 3), (1, 1), 'SAME'), ((3, 3), (2, 2), 'SAME'),
    ((3, 3), (3, 3), 'VALID'), ((2, 2), (3, 3), ((2, 0), (0, 1))),
])
def test_the_matmul_equals_lax_forward_and_backward(size, kernel_size,
                                                    padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((5, *size, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((*kernel_size, 4, 6)), jnp.float32)
  np.testing.assert_allclose(_dense(x, kernel, padding),
                             _lax(x, kernel, padding), rtol=1e-5, atol=1e-5)

  def loss(f, x, kernel):
    return jnp.sum(jnp.sin(f(x, kernel, padding)))

  for ours, theirs in zip(
      jax.grad(functools.partial(loss, _dense), argnums=(0, 1))(x, kernel),
      jax.grad(functools.partial(loss, _lax), argnums=(0, 1))(x, kernel)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size,strides,channels,dense', [
    ((2, 2), (1, 1), 64, True), ((3, 3), (1, 1), 64, True),
    ((4, 4), (1, 1), 32, False),  # more positions than MAX_DENSE_POSITIONS
    ((2, 2), (2, 2), 64, False),  # strided
    ((3, 3), (1, 1), 512, False),  # a matrix over MAX_DENSE_MATRIX
])
def test_only_stride_1_convolutions_of_tiny_maps_run_as_a_matmul(
    size, strides, channels, dense, monkeypatch):
  calls = []
  monkeypatch.setattr(conv, 'dense_conv',
                      lambda *a, **k: calls.append(a) or 'dense')
  x = jnp.zeros((2, *size, channels))
  kernel = jnp.zeros((3, 3, channels, channels))
  out = conv.conv_general_dilated(x, kernel, strides, 'SAME',
                                  dimension_numbers=NHWC)
  assert (out == 'dense') if dense else (out.shape[0] == 2 and not calls)


def test_the_digits_model_keeps_flax_conv_parameters_and_outputs():
  # The same parameter tree as plain nn.Conv layers, so saved models and
  # checkpoints load either way, and the same outputs to float32 rounding.
  config = digits.get_config()
  model = models.build_model(config, 1, jnp.float32)
  images = jnp.asarray(np.random.default_rng(0).random((4, 8, 8, 1)),
                       jnp.float32)
  variables = model.init(jax.random.key(0), images, train=False)
  shapes = jax.tree.map(jnp.shape, variables['params']['encoder'])
  assert shapes['Conv_5'] == {'kernel': (3, 3, 64, 64)}  # the 2×2 layer
  ours = model.apply(variables, images, train=False)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(conv, 'MAX_DENSE_POSITIONS', 0)  # lax everywhere
    theirs = model.apply(variables, images, train=False)
  np.testing.assert_allclose(ours.embedding, theirs.embedding,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours.reconstruction, theirs.reconstruction,
                             rtol=1e-5, atol=1e-5)


def test_the_matmul_stays_off_on_accelerators(monkeypatch):
  assert conv.use_dense((2, 2), (3, 3, 64, 64))
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert not conv.use_dense((2, 2), (3, 3, 64, 64))


def _convolutions_in_ynn_fusions(compiled_text: str) -> int:
  """How many of a compiled module's convolutions XLA:CPU gave YNNPACK: the
  convolutions inside computations that a ``__ynn_fusion`` calls."""
  ynn = set(re.findall(r'calls=%?([\w.-]+).*"__ynn_fusion"', compiled_text))
  count, computation = 0, None
  for line in compiled_text.splitlines():
    header = re.match(r'(?:ENTRY )?%?([\w.-]+) \(.*\{$', line)
    if header:
      computation = header.group(1)
    elif ' convolution(' in line and computation in ynn:
      count += 1
  return count


def _conv_grads(x, kernel):
  return jax.grad(lambda x, k: jnp.sum(jnp.sin(_lax(x, k, 'SAME'))),
                  argnums=(0, 1))(x, kernel)


@pytest.fixture
def cpu_options():
  if jax.default_backend() != 'cpu' or not conv.compiler_options():
    pytest.skip('this XLA:CPU takes no YNNPACK fusion options')
  return conv.compiler_options()


def test_on_a_cpu_convolutions_stay_out_of_ynnpack(cpu_options):
  # The filter gradients XLA:CPU's YNNPACK fusions computed were the train
  # step's slowest ops (benchmarks/train_step.py --compare-xla-default).
  args = (jnp.ones((8, 14, 14, 16)), jnp.ones((3, 3, 16, 32)))
  default = jax.jit(_conv_grads).lower(*args).compile().as_text()
  ours = jax.jit(_conv_grads, compiler_options=cpu_options).lower(
      *args).compile().as_text()
  assert ' convolution(' in ours
  assert _convolutions_in_ynn_fusions(ours) == 0
  if '__ynn_fusion' in default:  # where XLA's default hands them over
    assert _convolutions_in_ynn_fusions(default) > 0


def test_the_options_leave_the_gradients_unchanged(cpu_options):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 9, 7, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 8)), jnp.float32)
  ours = jax.jit(_conv_grads, compiler_options=cpu_options)(x, kernel)
  theirs = jax.jit(_conv_grads, compiler_options={})(x, kernel)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_train_steps_forward_is_compiled_with_them(cpu_options):
  del cpu_options
  from jcc import parallel  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  model = models.build_model(config, 1, jnp.float32)
  images = jnp.zeros((4, 8, 8, 1), jnp.uint8)
  variables = model.init(jax.random.key(0), images.astype(jnp.float32),
                         train=False)
  mesh = parallel.make_mesh(jax.devices()[:1])
  text = inference.make_forward(model, mesh).lower(
      variables, images).compile().as_text()
  assert ' convolution(' in text
  assert _convolutions_in_ynn_fusions(text) == 0


def test_no_options_off_the_cpu_or_where_the_user_set_ynnpack(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert conv.compiler_options() == {}
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setenv(
      'XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=kDefault')
  assert conv.compiler_options() == {}


def test_no_options_where_xla_rejects_them(monkeypatch):
  monkeypatch.setattr(conv, 'CPU_COMPILER_OPTIONS', {
      'xla_cpu_experimental_ynn_fusion_type': 'NO_SUCH_FUSION'})
  monkeypatch.setattr(conv, '_cpu_options_accepted',
                      conv._cpu_options_accepted.__wrapped__)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert conv.compiler_options() == {}
