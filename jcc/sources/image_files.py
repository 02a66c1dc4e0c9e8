"""Sources of image files: the user's folders and the Tiny-ImageNet layout.

Every source of image files (these, the ILSVRC2012 folder of the ImageNet
subsets, predict's inputs) goes through :func:`decode_images`: one decode
path, as a viewer shows an image, with one bad-file policy.
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings

from absl import logging
import numpy as np

from jcc.errors import DataError
from jcc.sources import streamed
from jcc.sources.dataset import ImageDataset, resize_image


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')


def _is_image(path: str) -> bool:
  """An image file by its name; a symbolic link that leads nowhere (dangling,
  or a loop) counts too: decoding then reports it as a bad file, rather than
  it vanishing."""
  return os.path.basename(path).lower().endswith(IMAGE_EXTENSIONS) and (
      os.path.isfile(path) or (os.path.islink(path) and
                               not os.path.exists(path)))


def _images_in(folder: str) -> list[str]:
  """The image files directly in ``folder``, sorted."""
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if _is_image(os.path.join(folder, f)))


def _images_under(folder: str) -> tuple[list[str], list[str]]:
  """(the image files at any depth under ``folder``, sorted by path; what
  was passed over: files that are not images, hidden folders and links to
  folders, which are not followed)."""
  images, passed_over = [], []
  for current, folders, names in os.walk(folder):
    for name in sorted(folders):
      path = os.path.join(current, name)
      if name.startswith('.') or os.path.islink(path):
        passed_over.append(path + os.sep)
    folders[:] = sorted(d for d in folders if not d.startswith('.') and
                        not os.path.islink(os.path.join(current, d)))
    for name in names:
      path = os.path.join(current, name)
      if _is_image(path):
        images.append(path)
      elif not name.startswith('.'):  # .DS_Store and the like: not data
        passed_over.append(path)
  return sorted(images), passed_over


def _class_files(folders: list[str]) -> tuple[list[str], list[int]]:
  """The image files of each folder (sorted), labelled by its position."""
  files, labels = [], []
  for label, folder in enumerate(folders):
    found = _images_in(folder)
    files += found
    labels += [label] * len(found)
  return files, labels


def _list_images(root: str, labelled: bool = True
                 ) -> tuple[list[str], list[int] | None, list[str], list[str]]:
  """(files, labels or None, class names, what was passed over).

  Class subfolders (each first-level folder is a class, and its images at
  any depth below it are that class's), or a flat folder. One layout or the
  other: images both at the top level and in class folders are an error
  (the top-level ones would have no class). Not ``labelled`` (images to
  predict): every image under ``root``, whatever the layout.
  """
  if not labelled:
    files, passed_over = _images_under(root)
    return files, None, [], passed_over
  found, passed_over = {}, []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if name.startswith('.'):
      if os.path.isdir(path):
        passed_over.append(path + os.sep)
    elif os.path.isdir(path):
      found[name], skipped = _images_under(path)
      passed_over += skipped
      if not found[name]:
        passed_over.append(path + os.sep)
    elif not _is_image(path):
      passed_over.append(path)
  classes = [name for name, files in found.items() if files]
  top_level = _images_in(root)
  if not classes:
    return top_level, None, [], passed_over
  if top_level:
    raise DataError(
        f'{root}: {len(top_level)} images at its top level (e.g. '
        f'{os.path.basename(top_level[0])}) beside {len(classes)} class '
        f'folder(s) ({", ".join(classes[:5])}{", …" if len(classes) > 5 else ""}'
        '). Use one layout: every image in a class folder, or all of them '
        'at the top level (no labels).')
  files = [f for name in classes for f in found[name]]
  labels = [label for label, name in enumerate(classes)
            for _ in found[name]]
  return files, labels, classes, passed_over


def warn_passed_over(root: str, passed_over: list[str]) -> None:
  """Names, in one warning, what a folder held that is not read as images."""
  if not passed_over:
    return
  shown = ', '.join(os.path.relpath(p, root) + (os.sep if p.endswith(os.sep)
                                                 else '')
                    for p in passed_over[:5])
  logging.warning(
      '%s: passed over %d entr%s that %s no image file (by extension: %s): '
      '%s%s.', root, len(passed_over), 'y' if len(passed_over) == 1 else 'ies',
      'is' if len(passed_over) == 1 else 'are', ' '.join(IMAGE_EXTENSIONS),
      shown, ', …' if len(passed_over) > 5 else '')


class _BadImage(Exception):
  """An image file that cannot be used; the message says why."""


def _eight_bit(image):
  """Single-channel images of more than 8 bits, scaled (not clipped) to 8.

  PIL's convert('L') clips a 16-bit PNG's 0…65535 to 0…255; its values are
  scaled by 255/65535 instead ('I;16*', and 'I' holding 16-bit values).
  Floating-point images are taken as 0…1 where they lie in it, else 0…255.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.mode.startswith('I;16') or image.mode == 'I':
    values = np.asarray(image, np.float64)
    if image.mode.startswith('I;16') or values.max(initial=0) > 255:
      values = values * (255 / 65535)
  elif image.mode == 'F':
    values = np.asarray(image, np.float64)
    if values.size and 0 <= values.min() and values.max() <= 1:
      values = values * 255
  else:
    return image
  return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def _read_image(path: str, size: int, mode: str | None = None,
                large: list[str] | None = None):
  """(size, size, C) uint8 and whether the file is grayscale.

  As a viewer shows it: EXIF orientation applied, 16-bit values scaled to 8
  bits. ``mode`` 'L' or 'RGB' forces the channels; None keeps gray images
  gray. Raises _BadImage, saying why, for a file that cannot be used.
  ``large``: where the paths of images beyond Pillow's pixel warning limit
  are noted.
  """
  large = [] if large is None else large
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  if os.path.islink(path) and not os.path.exists(path):
    raise _BadImage('a symbolic link that leads to no file')
  try:
    with Image.open(path) as image:
      if image.size[0] * image.size[1] > Image.MAX_IMAGE_PIXELS:
        large.append(path)  # decoded, but named (Pillow would only warn)
      image.load()
      image = ImageOps.exif_transpose(image)
      gray = _is_gray(image.mode)
      image = np.asarray(
          _eight_bit(image).convert(mode or ('L' if gray else 'RGB')), np.uint8)
  except Image.DecompressionBombError as e:
    raise _BadImage(
        f'too large to decode safely ({e}); Pillow allows up to '
        f'{2 * Image.MAX_IMAGE_PIXELS:,} pixels') from None
  except (OSError, ValueError, SyntaxError) as e:
    raise _BadImage(f'unreadable ({type(e).__name__})') from None
  return resize_image(image.reshape(image.shape[:2] + (-1,)), size), gray


_GRAY_MODES = ('1', 'L', 'I', 'F')


def _is_gray(mode: str) -> bool:
  return mode in _GRAY_MODES or mode.startswith('I;16')


def _check_bad(files: list[str], problems: list[str | None],
               skip_bad_images: bool, where: str) -> np.ndarray:
  """The one bad-file policy: indices of the files without a problem;
  DataError where none is left, or where one has a problem and
  ``skip_bad_images`` is False; a warning that lists the others."""
  bad = [f'{f} ({p})' for f, p in zip(files, problems) if p is not None]
  if len(bad) == len(files):
    raise DataError(f'{where}: none of the {len(files)} image files could be '
                    f'read (first: {bad[0]}).')
  if bad and not skip_bad_images:
    raise DataError(
        f'{where}: {len(bad)} unusable image file(s): {", ".join(bad)}. '
        'Remove them, or set --config.dataset.skip_bad_images=True.')
  if bad:
    logging.warning('Skipped %d unusable image file(s) in %s: %s', len(bad),
                    where, ', '.join(bad))
  return np.asarray([i for i, p in enumerate(problems) if p is None], int)


def _open_header(path: str) -> tuple[str | None, str | None]:
  """(the image's mode, None) from its header alone, or (None, why not)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if os.path.islink(path) and not os.path.exists(path):
    return None, 'a symbolic link that leads to no file'
  try:
    with Image.open(path) as image:
      return image.mode, None
  except (OSError, ValueError, SyntaxError) as e:
    return None, f'unreadable ({type(e).__name__})'


def stream_files(files: list[str], size: int, skip_bad_images: bool,
                 where: str, mode: str | None = None,
                 ) -> tuple[streamed.FileImages, np.ndarray]:
  """Image files as :class:`jcc.sources.streamed.FileImages` (decoded at
  every read), and the indices of the files kept. Only their headers are
  read here: a file that cannot be opened follows the bad-file policy of
  :func:`decode_images`, and ``mode`` is as there."""
  with concurrent.futures.ThreadPoolExecutor(
      max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
    headers = list(pool.map(_open_header, files))
  kept = _check_bad(files, [why for _, why in headers], skip_bad_images,
                    where)
  if mode is None:
    mode = 'RGB' if any(not _is_gray(headers[i][0]) for i in kept) else 'L'
  return streamed.FileImages([files[i] for i in kept], size, mode,
                             where), kept


def decode_images(files: list[str], size: int, skip_bad_images: bool,
                  where: str, mode: str | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Image files → (uint8 NHWC at size × size, indices of the files kept).

  Every source that reads image files decodes them here: PIL, on a pool of
  threads (decoding and resizing release the GIL). ``mode`` 'L' or 'RGB'
  forces the channels; None makes all RGB if any file is colour, else keeps
  them gray. One bad-file policy: unreadable or truncated files are skipped
  with a warning that lists them when ``skip_bad_images``, else they are an
  error; no readable file at all is always an error.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  large = []

  def read(path: str):
    try:
      return _read_image(path, size, mode, large)
    except _BadImage as e:
      return str(e)

  # Pillow's own warning for a very large image names no file: the line
  # below does.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
      decoded = list(pool.map(read, files))
  if large:
    logging.warning(
        '%s: %d very large image(s), over %s pixels, decoded and resized all '
        'the same (slow, and memory-hungry): %s%s', where, len(large),
        f'{Image.MAX_IMAGE_PIXELS:,}', ', '.join(sorted(large)[:5]),
        ', …' if len(large) > 5 else '')
  kept = _check_bad(files, [d if isinstance(d, str) else None
                            for d in decoded], skip_bad_images, where)
  any_colour = any(not decoded[i][1] for i in kept)
  images = [decoded[i][0] for i in kept]
  if any_colour and mode is None:
    images = [np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
              for x in images]
  return np.stack(images), kept


def load_folder(dataset_config) -> ImageDataset:
  """Images under config.dataset.path, resized to image_size.

  ``PATH/<class>/…/*.png|jpg|…`` gives labels (class folders in sorted
  order; images at any depth below a class folder are its); a flat folder
  gives none. What is passed over (other files, hidden folders, links to
  folders) is named in a warning. Grayscale, RGB and RGBA files may be mixed: if any
  is colour, all become RGB. Unreadable or truncated files are skipped with a
  warning that lists them when ``config.dataset.skip_bad_images`` is True
  (else they are an error); a folder with no readable image is an error.
  Streamed (:func:`jcc.sources.streamed.choose_streaming`), the files are
  decoded as the batches need them, and only their headers are read here.
  """
  root = dataset_config.path
  if not root:
    raise DataError(
        "dataset 'folder' needs a directory: set "
        '--config.dataset.path=DIR (DIR/<class>/*.jpg, or a flat DIR).')
  if not os.path.isdir(root):
    raise DataError(
        f"dataset 'folder': no directory at {root!r} (config.dataset.path).")
  files, labels, classes, passed_over = _list_images(root)
  if not files:
    raise DataError(
        f'{root}: no images found (looked for {", ".join(IMAGE_EXTENSIONS)} '
        'inside it and in its subfolders, at any depth).')
  warn_passed_over(root, passed_over)
  if streamed.choose_streaming(dataset_config, len(files), 3, root):
    images, kept = stream_files(files, dataset_config.image_size,
                                dataset_config.skip_bad_images, root)
  else:
    images, kept = decode_images(files, dataset_config.image_size,
                                  dataset_config.skip_bad_images, root)
  label_array = None if labels is None else np.asarray(labels, np.int64)[kept]
  logging.info('%s: %d images, %s.', root, len(images),
               f'{len(classes)} class folders ({", ".join(classes)})'
               if classes else 'flat (no labels)')
  return ImageDataset('folder', images, label_array,
                      class_names=tuple(classes) or None,
                      image_names=tuple(os.path.relpath(files[i], root)
                                        for i in kept))


def load_tiny_imagenet(dataset_config) -> ImageDataset:
  """Tiny-ImageNet's 100,000 train images from the official folder layout.

  ``config.dataset.path`` is the extracted ``tiny-imagenet-200`` folder:
  ``train/<wnid>/images/*.JPEG``; labels are the wnids in sorted order.
  """
  root = dataset_config.path
  train = os.path.join(root, 'train') if root else ''
  if not root or not os.path.isdir(train):
    raise DataError(
        "Dataset 'tiny_imagenet' has no TFDS builder: download "
        'tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200'
        '.zip), extract it and set --config.dataset.path to the folder that '
        f'holds train/ (looked for {train or "train/ under an empty path"}).')
  wnids = sorted(d for d in os.listdir(train)
                 if os.path.isdir(os.path.join(train, d, 'images')))
  files, labels = _class_files(
      [os.path.join(train, wnid, 'images') for wnid in wnids])
  if not files:
    raise DataError(f'{train}: no images in train/<wnid>/images/.')
  where = f'tiny_imagenet ({root})'
  read = (stream_files if streamed.choose_streaming(
      dataset_config, len(files), 3, where) else decode_images)
  images, kept = read(files, dataset_config.image_size,
                      dataset_config.skip_bad_images, where, mode='RGB')
  return ImageDataset('tiny_imagenet', images,
                      np.asarray(labels, np.int64)[kept],
                      class_names=tuple(wnids))
