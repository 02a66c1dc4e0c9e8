"""jcc.models: shapes and invariants of every backbone and head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcc import models


@pytest.mark.parametrize('size,start,ups', [
    (8, 4, 1), (16, 4, 2), (28, 7, 2), (32, 4, 3), (96, 6, 4), (224, 7, 5)])
def test_decoder_starts_small_and_ends_at_the_image_size(size, start, ups):
  assert models.decoder_start_size(size) == (start, ups)


@pytest.mark.parametrize('backbone,size,channels,feature_dim', [
    ('convnet', 8, 1, 32),
    ('convnet', 28, 1, 32),
    pytest.param('resnet18_cifar', 32, 3, 512, marks=pytest.mark.slow),
    pytest.param('resnet34', 64, 3, 512, marks=pytest.mark.slow),
])
def test_outputs_have_the_documented_shapes(backbone, size, channels,
                                            feature_dim):
  model = models.ClusteringModel(
      backbone=backbone, num_clusters=5, image_size=size, channels=channels,
      projection_dim=16, head_hidden=32, convnet_widths=(8, 16, 32),
      decoder_width=8)
  x = jnp.asarray(np.random.default_rng(0).uniform(
      size=(3, size, size, channels)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out.embedding.shape == (3, feature_dim)
  assert out.projection.shape == (3, 16)
  np.testing.assert_allclose(jnp.linalg.norm(out.projection, axis=1), 1.0,
                             rtol=1e-5)
  assert out.cluster_probs.shape == (3, 5)
  np.testing.assert_allclose(out.cluster_probs.sum(1), 1.0, rtol=1e-5)
  assert out.student_t.shape == (3, 5)
  np.testing.assert_allclose(out.student_t.sum(1), 1.0, rtol=1e-5)
  assert out.reconstruction.shape == x.shape
  assert float(out.reconstruction.min()) >= 0 and float(
      out.reconstruction.max()) <= 1
  assert variables['params']['clustering']['centroids'].shape == (
      5, feature_dim)
  no_decoder = model.apply(variables, x, decode=False)
  assert no_decoder.reconstruction is None


def test_eval_mode_is_deterministic_and_per_example():
  model = models.ClusteringModel(
      backbone='convnet', num_clusters=3, image_size=8, channels=1,
      convnet_widths=(4, 8), head_hidden=8, projection_dim=4, decoder_width=4)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 8, 8, 1)))
  variables = model.init(jax.random.key(0), x)
  full = model.apply(variables, x)
  first = model.apply(variables, x[:1])  # running statistics, not the batch's
  np.testing.assert_allclose(first.cluster_probs, full.cluster_probs[:1],
                             rtol=1e-5, atol=1e-6)


def test_unknown_backbone_is_a_clear_error():
  model = models.ClusteringModel(
      backbone='vgg', num_clusters=3, image_size=8, channels=1)
  with pytest.raises(ValueError, match='Unknown backbone'):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_depth_to_space_places_channel_blocks_as_pixels():
  x = jnp.arange(2 * 3 * 3 * 8, dtype=jnp.float32).reshape(2, 3, 3, 8)
  y = models.depth_to_space(x, 2)
  assert y.shape == (2, 6, 6, 2)
  # Output pixel (2i+a, 2j+b) holds input pixel (i, j)'s channel block (a, b).
  for a in range(2):
    for b in range(2):
      np.testing.assert_array_equal(
          y[:, a::2, b::2, :], x[..., (2 * a + b) * 2:(2 * a + b) * 2 + 2])


def test_head_batchnorm_normalises_the_heads_hidden_layer():
  kwargs = dict(backbone='convnet', num_clusters=3, image_size=8, channels=1,
                convnet_widths=(4, 8), head_hidden=8, projection_dim=4,
                decoder_width=4)
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(6, 8, 8, 1)))
  plain = models.ClusteringModel(**kwargs).init(jax.random.key(0), x)
  model = models.ClusteringModel(**kwargs, head_batchnorm=True)
  variables = model.init(jax.random.key(0), x)
  for head in ('instance_head', 'cluster_head'):
    assert 'BatchNorm_0' not in plain['params'][head]
    assert 'bias' not in variables['params'][head]['Dense_0']
    assert variables['batch_stats'][head]['BatchNorm_0']['mean'].shape == (8,)
  # Training normalises by the batch and updates the running statistics.
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert not np.allclose(
      updates['batch_stats']['cluster_head']['BatchNorm_0']['mean'], 0.0)


def test_model_spec_gives_a_config_saved_before_a_field_its_old_model():
  from tests.conftest import tiny_config
  config = tiny_config()
  spec = models.model_spec(config, channels=1)
  assert set(spec) == set(models.MODEL_FIELDS) | {'channels', 'with_decoder'}
  assert spec['convnet_widths'] == [8, 16] and spec['head_batchnorm'] is False
  older = config.copy_and_resolve_references()
  del older.model['head_batchnorm']
  assert models.model_spec(older, channels=1) == spec
  assert models.build_model(older, 1).head_batchnorm is False


def test_without_a_reconstruction_term_no_decoder_is_built(tmp_path):
  from tests.conftest import tiny_config
  config = tiny_config()
  config.loss.reconstruction = 0.0
  model = models.build_model(config, 1)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  assert 'decoder' not in variables['params']
  assert model.apply(variables, jnp.zeros((2, 8, 8, 1))).reconstruction is None
  with_decoder = models.build_model(tiny_config(), 1)
  full = with_decoder.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  # The other modules start from the same weights either way.
  for name, value in variables['params'].items():
    for a, b in zip(jax.tree.leaves(value), jax.tree.leaves(
        full['params'][name])):
      np.testing.assert_array_equal(a, b)
  # A model saved with a decoder still predicts where none is built.
  out = model.apply(full, jnp.ones((2, 8, 8, 1)), decode=False)
  np.testing.assert_array_equal(out.embedding, with_decoder.apply(
      full, jnp.ones((2, 8, 8, 1)), decode=False).embedding)


def test_a_workdir_from_before_the_choice_had_a_decoder(tmp_path):
  from jcc import checkpoint
  from tests.conftest import tiny_config
  config = tiny_config()
  signature = checkpoint.model_signature(config, 1, 1797, 'digest')
  del signature['with_decoder']  # as versions before the key wrote it
  checkpoint.write_model_signature(str(tmp_path), signature)
  checkpoint.check_model_signature(
      str(tmp_path), checkpoint.model_signature(config, 1, 1797, 'digest'))
  config.loss.reconstruction = 0.0
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'a decoder \(loss.reconstruction above 0\): '
                     'True there, False now'):
    checkpoint.check_model_signature(str(tmp_path), checkpoint.model_signature(
        config, 1, 1797, 'digest'))
