"""Image augmentation in JAX, run inside the jitted train step.

Every function takes float images in [0, 1], NHWC (or HWC for the per-image
functions), and a PRNG key; each image of a batch gets its own key, so a run is
reproducible from its seed and the views are independent across images.

The set follows SimCLR / Contrastive Clustering: random resized crop,
horizontal flip, (for digits and other glyphs) a small random rotation and
shear, colour jitter (brightness, contrast, saturation, hue, in
random order, applied with a probability), grayscale, Gaussian blur; plus
Gaussian pixel noise, and Cutout for the strong views of self-labelling. Saturation, hue and luma come from dm-pix; they are
skipped for 1-channel images.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array


def random_resized_crop(
    key: Array,
    image: Array,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    size: int | None = None,
) -> Array:
  """Crops a random region and resizes it to ``size`` × ``size``.

  The region's area is a uniform fraction ``scale`` of the image and its
  aspect ratio w/h is log-uniform in ``ratio``; it is clipped to the image
  and placed uniformly (Inception/SimCLR semantics, without rejection).

  Args:
    key: PRNG key.
    image: (H, W, C) float image.
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's aspect ratio.
    size: the output's side; None keeps the image's size.

  Returns:
    (size, size, C) float image ((H, W, C) when ``size`` is None).
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
  return crop_and_resize(image, y0, x0, crop_h, crop_w, size)


def crop_and_resize(
    image: Array, y0: Array, x0: Array, crop_h: Array, crop_w: Array,
    size: int | None = None) -> Array:
  """Resamples the box [y0, y0+crop_h) × [x0, x0+crop_w) to ``size`` ×
  ``size`` (None: the image's own size).

  Bilinear, with antialiasing when the box is larger than the output; the box
  may be fractional and traced. The full box at the image's own size
  reproduces the image exactly.
  """
  shape = image.shape if size is None else (size, size, image.shape[2])
  scale = jnp.stack([shape[0] / crop_h, shape[1] / crop_w])
  translation = -jnp.stack([y0, x0]) * scale
  out = jax.image.scale_and_translate(
      image, shape, spatial_dims=(0, 1), scale=scale,
      translation=translation, method='linear', antialias=True)
  return jnp.clip(out, 0.0, 1.0)


def resize_batch(images: Array, size: int) -> Array:
  """An (N, H, W, C) batch resized to (N, size, size, C): the whole image,
  as :func:`crop_and_resize` resamples a box."""
  if images.shape[1:3] == (size, size):
    return images
  height, width = images.shape[1], images.shape[2]
  return jax.vmap(lambda image: crop_and_resize(
      image, 0.0, 0.0, height, width, size))(images)


def random_affine(
    key: Array, image: Array, rotation: float = 0.0, shear: float = 0.0
) -> Array:
  """Rotates by U[−rotation, rotation] and shears by U[−shear, shear] degrees.

  Both about the image's centre; the output pixel at p samples the input at
  A⁻¹(p − c) + c (bilinear), with A = R(θ)·S(φ) and S(φ) = [[1, tan φ], [0, 1]]
  a horizontal shear; pixels from outside the image are 0 (torchvision's
  RandomAffine semantics). Angle 0 reproduces the image exactly.
  """
  height, width = image.shape[0], image.shape[1]
  k_rot, k_shear = jax.random.split(key)
  theta = jnp.deg2rad(jax.random.uniform(k_rot, minval=-rotation,
                                         maxval=rotation))
  phi = jnp.deg2rad(jax.random.uniform(k_shear, minval=-shear, maxval=shear))
  cos, sin, tan = jnp.cos(theta), jnp.sin(theta), jnp.tan(phi)
  # A = R S with R = [[cos, -sin], [sin, cos]] in (x, y); its inverse:
  # S⁻¹ R⁻¹ = [[1, -tan], [0, 1]] · [[cos, sin], [-sin, cos]].
  inverse = jnp.array([[cos + tan * sin, sin - tan * cos], [-sin, cos]])
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=image.dtype),
                        jnp.arange(width, dtype=image.dtype), indexing='ij')
  cy, cx = (height - 1) / 2, (width - 1) / 2
  offsets = jnp.stack([xs - cx, ys - cy])  # (2, H, W) in (x, y)
  src_x, src_y = jnp.einsum('ij,jhw->ihw', inverse, offsets)
  coordinates = [src_y + cy, src_x + cx]

  def warp(channel):
    return jax.scipy.ndimage.map_coordinates(
        channel, coordinates, order=1, mode='constant', cval=0.0)

  return jnp.moveaxis(jax.vmap(warp, in_axes=2)(image), 0, -1)


def horizontal_flip(key: Array, image: Array, prob: float = 0.5) -> Array:
  """Mirrors the (H, W, C) image left-right with probability ``prob``."""
  return jnp.where(jax.random.bernoulli(key, prob), image[:, ::-1], image)


def color_jitter(
    key: Array,
    image: Array,
    brightness: float,
    contrast: float,
    saturation: float = 0.0,
    hue: float = 0.0,
    random_order: bool = True,
) -> Array:
  """Colour jitter with torchvision's ranges, the operations in random order.

  Brightness, contrast and saturation factors are drawn from
  U[max(0, 1−x), 1+x] and the hue shift from U[−hue, hue] (a fraction of
  the colour circle); an operation whose strength is 0 is skipped, and so are
  saturation and hue for 1-channel images. Contrast scales around the image's
  mean. With ``random_order`` False the order is brightness, contrast,
  saturation, hue. The result stays in [0, 1].
  """
  k_b, k_c = jax.random.split(key)
  k_s, k_h, k_order = (jax.random.fold_in(key, i) for i in (2, 3, 4))

  def factor(k, strength):
    return jax.random.uniform(
        k, minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)

  ops = []
  if brightness > 0:
    f_b = factor(k_b, brightness)
    ops.append(lambda x: jnp.clip(x * f_b, 0.0, 1.0))
  if contrast > 0:
    f_c = factor(k_c, contrast)
    ops.append(lambda x: jnp.clip((x - jnp.mean(x)) * f_c + jnp.mean(x),
                                  0.0, 1.0))
  if image.shape[-1] == 3 and saturation > 0:
    f_s = factor(k_s, saturation)
    ops.append(lambda x: jnp.clip(pix.adjust_saturation(x, f_s), 0.0, 1.0))
  if image.shape[-1] == 3 and hue > 0:
    delta = jax.random.uniform(k_h, minval=-hue, maxval=hue)
    ops.append(lambda x: jnp.clip(pix.adjust_hue(x, delta), 0.0, 1.0))
  if not ops:
    return image
  if not random_order or len(ops) == 1:
    for op in ops:
      image = op(image)
    return image
  order = jax.random.permutation(k_order, len(ops))
  for position in range(len(ops)):
    image = jax.lax.switch(order[position], ops, image)
  return image


def to_grayscale(image: Array) -> Array:
  """Luma (Rec. 601) in every channel; 1-channel images are returned as they are."""
  if image.shape[-1] != 3:
    return image
  return pix.rgb_to_grayscale(image, keep_dims=True)  # keeps the 3 channels


def gaussian_blur(key: Array, image: Array,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> Array:
  """Blurs with σ ~ U[sigma] and a kernel about a tenth of the image's side.

  Separable: one (H, H) and one (W, W) banded matrix of Gaussian weights,
  each row renormalised, so borders keep their brightness (224 → 23 taps).
  """
  s = jax.random.uniform(key, minval=sigma[0], maxval=sigma[1])

  def weights(n):
    radius = max(1, round(0.05 * image.shape[0]))
    offset = jnp.arange(n)[:, None] - jnp.arange(n)[None, :]
    w = jnp.where(jnp.abs(offset) <= radius,
                  jnp.exp(-0.5 * (offset / s) ** 2), 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)

  out = jnp.einsum('ij,jkc,lk->ilc', weights(image.shape[0]), image,
                   weights(image.shape[1]))
  return jnp.clip(out, 0.0, 1.0)


def gaussian_noise(key: Array, image: Array, stddev: float) -> Array:
  """Adds N(0, stddev²) noise per pixel; the result is clipped to [0, 1]."""
  noise = stddev * jax.random.normal(key, image.shape, image.dtype)
  return jnp.clip(image + noise, 0.0, 1.0)


def cutout(key: Array, image: Array, size: float) -> Array:
  """Cutout (DeVries & Taylor 2017): a square of side ``size``·min(H, W)
  at a uniformly random centre (it may reach past the border) set to 0.5."""
  height, width = image.shape[:2]
  side = size * min(height, width)
  cy, cx = jax.random.uniform(key, (2,)) * jnp.array([height, width])
  ys = jnp.arange(height)[:, None] + 0.5
  xs = jnp.arange(width)[None, :] + 0.5
  inside = (jnp.abs(ys - cy) < side / 2) & (jnp.abs(xs - cx) < side / 2)
  return jnp.where(inside[..., None], 0.5, image)


def _with_probability(key: Array, prob: float, new: Array, old: Array):
  if prob >= 1.0:
    return new
  return jnp.where(jax.random.bernoulli(key, prob), new, old)


def augment_image(
    key: Array, image: Array, cfg: ml_collections.ConfigDict,
    cutout_size: float = 0.0, size: int | None = None) -> Array:
  """One random view of one (H, W, C) image, as ``cfg`` (config.augment)
  says, then a Cutout of ``cutout_size`` (0: none). The crop is resized to
  ``size`` × ``size`` (None: the image's size), so a view can be cut from an
  image larger than the network's input, as torchvision's
  ``RandomResizedCrop(size)`` cuts it from the original."""
  k_crop, k_flip, k_jitter, k_noise = jax.random.split(key, 4)
  # Keys of the later additions are folded in, so the four above stay as
  # they were (and a config that leaves the additions off, as digits does,
  # gives the same views as before).
  k_apply, k_gray, k_blur, k_blur_apply, k_affine = (
      jax.random.fold_in(key, i) for i in range(10, 15))
  image = random_resized_crop(
      k_crop, image, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), size)
  if cfg.rotation > 0 or cfg.shear > 0:
    image = random_affine(k_affine, image, cfg.rotation, cfg.shear)
  if cfg.flip_prob > 0:
    image = horizontal_flip(k_flip, image, cfg.flip_prob)
  if cfg.jitter_prob > 0 and (cfg.brightness > 0 or cfg.contrast > 0 or
                              cfg.saturation > 0 or cfg.hue > 0):
    jittered = color_jitter(k_jitter, image, cfg.brightness, cfg.contrast,
                            cfg.saturation, cfg.hue, cfg.jitter_random_order)
    image = _with_probability(k_apply, cfg.jitter_prob, jittered, image)
  if cfg.grayscale_prob > 0 and image.shape[-1] == 3:
    image = _with_probability(
        k_gray, cfg.grayscale_prob, to_grayscale(image), image)
  if cfg.blur_prob > 0:
    image = _with_probability(k_blur_apply, cfg.blur_prob,
                              gaussian_blur(k_blur, image,
                                            tuple(cfg.blur_sigma)), image)
  if cfg.noise_stddev > 0:
    image = gaussian_noise(k_noise, image, cfg.noise_stddev)
  if cutout_size > 0:
    image = cutout(jax.random.fold_in(key, 15), image, cutout_size)
  return image


def augment_batch(
    key: Array, images: Array, cfg: ml_collections.ConfigDict,
    cutout_size: float = 0.0, size: int | None = None) -> Array:
  """One random view of each image of an (N, H, W, C) batch, each
  ``size`` × ``size`` (None: H × W)."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment_image, in_axes=(0, 0, None, None, None))(
      keys, images, cfg, cutout_size, size)


def two_views(
    key: Array, images: Array, cfg: ml_collections.ConfigDict,
    cutout_size: float = 0.0, size: int | None = None,
) -> tuple[Array, Array]:
  """Two independent random views of each image of an (N, H, W, C) batch,
  each ``size`` × ``size`` (None: H × W)."""
  k_a, k_b = jax.random.split(key)
  return (augment_batch(k_a, images, cfg, cutout_size, size),
          augment_batch(k_b, images, cfg, cutout_size, size))
