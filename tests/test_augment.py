"""jcc.augment: the random views keep images valid and are reproducible."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jcc import augment


def _images(n=4, size=12, channels=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(
      size=(n, size, size, channels)), jnp.float32)


def _config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      crop_scale=(0.3, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
      brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_prob=0.8,
      jitter_random_order=True, grayscale_prob=0.2, blur_prob=0.5,
      blur_sigma=(0.1, 2.0), noise_stddev=0.05, rotation=0.0, shear=0.0))
  cfg.update(overrides)
  return cfg


def test_full_crop_reproduces_the_image():
  image = _images(1)[0]
  out = augment.crop_and_resize(image, 0.0, 0.0, 12.0, 12.0)
  np.testing.assert_allclose(out, image, atol=1e-6)
  out = augment.random_resized_crop(
      jax.random.key(0), image, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(out, image, atol=1e-6)


def test_crop_of_a_corner_magnifies_it():
  image = jnp.zeros((8, 8, 1)).at[:4, :4].set(1.0)  # bright top-left quarter
  out = augment.crop_and_resize(image, 0.0, 0.0, 4.0, 4.0)
  assert out.shape == image.shape
  # Bilinear sampling blends the box's last row/column with its neighbours.
  np.testing.assert_allclose(out[:7, :7], 1.0, atol=1e-6)
  assert float(out.min()) >= 0.5


def test_a_view_cut_from_a_larger_image_has_the_requested_size():
  big = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  cfg = _config(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
             jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
             noise_stddev=0.0)
  a, b = augment.two_views(jax.random.key(0), big, cfg, size=16)
  assert a.shape == b.shape == (2, 16, 16, 3)
  # The whole crop at 16 is the whole image resized, as evaluation sees it.
  whole = augment.resize_batch(big, 16)
  np.testing.assert_allclose(a, whole, atol=1e-5)
  # Antialiased: the halved image keeps each picture's mean, and a bright
  # left half stays the bright left half.
  np.testing.assert_allclose(whole.mean(axis=(1, 2)), big.mean(axis=(1, 2)),
                             atol=0.01)
  half = jnp.zeros((1, 32, 32, 1)).at[:, :, :16].set(1.0)
  halved = augment.resize_batch(half, 16)[0, :, :, 0]
  np.testing.assert_allclose(halved[:, :7], 1.0, atol=1e-6)
  np.testing.assert_allclose(halved[:, 9:], 0.0, atol=1e-6)
  assert augment.resize_batch(big, 32) is big


def test_flip_twice_is_the_identity():
  image = _images(1)[0]
  key = jax.random.key(3)
  once = augment.horizontal_flip(key, image, prob=1.0)
  np.testing.assert_array_equal(once, image[:, ::-1])
  np.testing.assert_array_equal(
      augment.horizontal_flip(key, once, prob=1.0), image)
  np.testing.assert_array_equal(
      augment.horizontal_flip(key, image, prob=0.0), image)


def test_jitter_and_noise_stay_in_unit_range():
  images = _images(16)
  keys = jax.random.split(jax.random.key(1), 16)
  jittered = jax.vmap(augment.color_jitter, (0, 0, None, None))(
      keys, images, 0.9, 0.9)
  noisy = jax.vmap(augment.gaussian_noise, (0, 0, None))(keys, images, 0.5)
  for out in (jittered, noisy):
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(jittered, images)


def test_views_are_reproducible_per_key_and_differ_across_keys():
  images = _images(8)
  cfg = _config()
  two_views = jax.jit(lambda key, x: augment.two_views(key, x, cfg))
  a1, b1 = two_views(jax.random.key(0), images)
  a2, b2 = two_views(jax.random.key(0), images)
  a3, _ = two_views(jax.random.key(1), images)
  np.testing.assert_array_equal(a1, a2)
  np.testing.assert_array_equal(b1, b2)
  assert a1.shape == images.shape and a1.dtype == jnp.float32
  assert not np.allclose(a1, a3)
  assert not np.allclose(a1, b1)
  # Each image gets its own key: identical images give different views.
  same = jnp.broadcast_to(images[:1], images.shape)
  views, _ = two_views(jax.random.key(0), same)
  assert not np.allclose(views[0], views[1])
  assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0


def test_grayscale_makes_the_channels_equal():
  gray = augment.to_grayscale(_images(1)[0])
  assert gray.shape == (12, 12, 3)
  np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-6)
  np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-6)
  single = _images(1, channels=1)[0]
  np.testing.assert_array_equal(augment.to_grayscale(single), single)


def test_full_colour_jitter_stays_in_unit_range_and_order_matters():
  images = _images(32)
  keys = jax.random.split(jax.random.key(2), 32)
  jitter = jax.vmap(augment.color_jitter,
                    (0, 0, None, None, None, None, None))
  out = jitter(keys, images, 0.8, 0.8, 0.8, 0.2, True)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  fixed = jitter(keys, images, 0.8, 0.8, 0.8, 0.2, False)
  # Same factors, different orders for some images: some views differ.
  assert not np.allclose(out, fixed)
  # Zero strengths are the identity.
  np.testing.assert_array_equal(
      jitter(keys, images, 0.0, 0.0, 0.0, 0.0, True), images)


def test_blur_smooths_and_keeps_the_mean():
  image = _images(1, size=32)[0]
  blurred = augment.gaussian_blur(jax.random.key(0), image, (2.0, 2.0))
  assert float(jnp.std(blurred)) < 0.5 * float(jnp.std(image))
  assert abs(float(jnp.mean(blurred)) - float(jnp.mean(image))) < 0.05


def test_affine_of_zero_degrees_is_the_identity():
  image = _images(n=1, size=10)[0]
  out = augment.random_affine(jax.random.key(3), image, 0.0, 0.0)
  np.testing.assert_allclose(out, image, atol=1e-6)


def test_affine_rotates_a_bar_about_the_centre():
  # A vertical bar through the centre of an odd-sized image, rotated by up
  # to 40°: its pixels stay on one line through the centre whose angle from
  # the vertical is the rotation (atan of the spread), and the centre pixel
  # is kept.
  size = 21
  image = jnp.zeros((size, size, 1)).at[2:19, 10, 0].set(1.0)
  angles = []
  for seed in range(6):
    out = np.asarray(augment.random_affine(
        jax.random.key(seed), image, rotation=40.0)[..., 0])
    assert out[10, 10] > 0.99
    ys, xs = np.nonzero(out > 0.5)
    slope = np.polyfit(ys - 10, xs - 10, 1)[0]  # dx/dy of the bar
    angles.append(np.degrees(np.arctan(slope)))
    # Rotation keeps length: the extent above half intensity is the same up
    # to the two partly covered end pixels.
    assert abs(np.hypot(np.ptp(ys), np.ptp(xs)) - 16) <= 2.5
  assert max(abs(a) for a in angles) <= 40.5
  assert np.std(angles) > 5  # the angle is random per key


def test_shear_slants_a_vertical_bar_and_keeps_rows():
  size = 21
  image = jnp.zeros((size, size, 1)).at[2:19, 10, 0].set(1.0)
  out = np.asarray(augment.random_affine(
      jax.random.key(1), image, shear=30.0)[..., 0])
  ys, xs = np.nonzero(out > 0.5)
  # A horizontal shear moves pixels along rows only: the same rows are lit.
  assert set(ys) == set(range(2, 19))
  assert abs(np.polyfit(ys - 10, xs - 10, 1)[0]) <= np.tan(np.radians(30.5))


def test_views_with_affine_stay_in_unit_range_and_differ_per_key():
  cfg = _config(rotation=20.0, shear=15.0)
  images = _images(size=16)
  a = augment.augment_batch(jax.random.key(0), images, cfg)
  b = augment.augment_batch(jax.random.key(0), images, cfg)
  c = augment.augment_batch(jax.random.key(1), images, cfg)
  assert a.shape == images.shape
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_cutout_greys_one_square_of_the_given_side():
  image = jnp.zeros((16, 16, 1))
  for seed in range(20):
    out = augment.cutout(jax.random.key(seed), image, 0.5)
    grey = np.asarray(out[..., 0] == 0.5)
    rows, cols = np.nonzero(grey)
    # One axis-aligned square of side 8, cut where it reaches past a border.
    assert grey[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert rows.max() - rows.min() + 1 <= 8 >= cols.max() - cols.min() + 1
    assert (rows.max() - rows.min() + 1 == 8 or rows.min() == 0 or
            rows.max() == 15)
    np.testing.assert_array_equal(np.asarray(out)[~grey], 0.0)


def test_views_without_cutout_are_unchanged_by_its_key():
  images, cfg = _images(), _config()
  plain = augment.augment_batch(jax.random.key(0), images, cfg)
  cut = augment.augment_batch(jax.random.key(0), images, cfg, 0.5)
  np.testing.assert_array_equal(
      plain, augment.augment_batch(jax.random.key(0), images, cfg, 0.0))
  differs = np.asarray(plain != cut).any(axis=-1)
  assert 0 < differs.mean() <= 0.25 + 1e-6  # at most the square's area
