"""Image augmentation in JAX, run inside the jitted train step.

Every function takes float images in [0, 1], NHWC (or HWC for the per-image
functions), and a PRNG key; each image of a batch gets its own key, so a run is
reproducible from its seed and the views are independent across images.

The set here is the one a first version needs (crop, flip, brightness and
contrast jitter, noise); the SimCLR set (colour jitter in random order,
grayscale, blur) extends it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array


def random_resized_crop(
    key: Array,
    image: Array,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Array:
  """Crops a random region and resizes it back to the image's size.

  The region's area is a uniform fraction ``scale`` of the image and its
  aspect ratio w/h is log-uniform in ``ratio``; it is clipped to the image
  and placed uniformly (Inception/SimCLR semantics, without rejection).

  Args:
    key: PRNG key.
    image: (H, W, C) float image.
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's aspect ratio.

  Returns:
    (H, W, C) float image.
  """
  height, width = image.shape[0], image.shape[1]
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, minval=scale[0], maxval=scale[1])
  area = area * height * width
  log_ratio = jax.random.uniform(
      k_ratio, minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
  crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
  y0 = jax.random.uniform(k_y) * (height - crop_h)
  x0 = jax.random.uniform(k_x) * (width - crop_w)
  return crop_and_resize(image, y0, x0, crop_h, crop_w)


def crop_and_resize(
    image: Array, y0: Array, x0: Array, crop_h: Array, crop_w: Array) -> Array:
  """Resamples the box [y0, y0+crop_h) × [x0, x0+crop_w) to the full size.

  Bilinear, with antialiasing when the box is larger than the output; the box
  may be fractional and traced. The full box reproduces the image exactly.
  """
  height, width = image.shape[0], image.shape[1]
  scale = jnp.stack([height / crop_h, width / crop_w])
  translation = -jnp.stack([y0, x0]) * scale
  out = jax.image.scale_and_translate(
      image, image.shape, spatial_dims=(0, 1), scale=scale,
      translation=translation, method='linear', antialias=True)
  return jnp.clip(out, 0.0, 1.0)


def horizontal_flip(key: Array, image: Array, prob: float = 0.5) -> Array:
  """Mirrors the (H, W, C) image left-right with probability ``prob``."""
  return jnp.where(jax.random.bernoulli(key, prob), image[:, ::-1], image)


def brightness_contrast(
    key: Array, image: Array, brightness: float, contrast: float) -> Array:
  """Scales brightness by U[1−b, 1+b] and contrast by U[1−c, 1+c]; in [0, 1]."""
  k_b, k_c = jax.random.split(key)
  b = jax.random.uniform(k_b, minval=1 - brightness, maxval=1 + brightness)
  c = jax.random.uniform(k_c, minval=1 - contrast, maxval=1 + contrast)
  image = jnp.clip(image * b, 0.0, 1.0)
  mean = jnp.mean(image)
  return jnp.clip((image - mean) * c + mean, 0.0, 1.0)


def gaussian_noise(key: Array, image: Array, stddev: float) -> Array:
  """Adds N(0, stddev²) noise per pixel; the result is clipped to [0, 1]."""
  noise = stddev * jax.random.normal(key, image.shape, image.dtype)
  return jnp.clip(image + noise, 0.0, 1.0)


def augment_image(
    key: Array, image: Array, cfg: ml_collections.ConfigDict) -> Array:
  """One random view of one (H, W, C) image, as ``cfg`` (config.augment) says."""
  k_crop, k_flip, k_jitter, k_noise = jax.random.split(key, 4)
  image = random_resized_crop(
      k_crop, image, tuple(cfg.crop_scale), tuple(cfg.crop_ratio))
  if cfg.flip_prob > 0:
    image = horizontal_flip(k_flip, image, cfg.flip_prob)
  if cfg.brightness > 0 or cfg.contrast > 0:
    image = brightness_contrast(k_jitter, image, cfg.brightness, cfg.contrast)
  if cfg.noise_stddev > 0:
    image = gaussian_noise(k_noise, image, cfg.noise_stddev)
  return image


def augment_batch(
    key: Array, images: Array, cfg: ml_collections.ConfigDict) -> Array:
  """One random view of each image of an (N, H, W, C) batch."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment_image, in_axes=(0, 0, None))(keys, images, cfg)


def two_views(
    key: Array, images: Array, cfg: ml_collections.ConfigDict
) -> tuple[Array, Array]:
  """Two independent random views of each image of an (N, H, W, C) batch."""
  k_a, k_b = jax.random.split(key)
  return augment_batch(k_a, images, cfg), augment_batch(k_b, images, cfg)
