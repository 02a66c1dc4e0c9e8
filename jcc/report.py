"""The cluster report: what each cluster holds and which classes get confused.

``write_report`` fills ``WORKDIR/report/`` with

* ``clusters.png``: one row per cluster, its most confident images (cluster
  head) left to right, with the cluster's size;
* ``confusion.png``: true class × cluster, clusters ordered by their
  Hungarian match to the classes, when labels exist;
* ``metrics.txt``: the results table;
* ``cluster_sizes.csv``: images per cluster, by the cluster head and by DEC;
* ``assignments.csv``: every image's index (and file, for image files),
  label, cluster, confidence and DEC cluster;
* ``embeddings.npy``: each image's embedding, (N, D) float32, row i for
  assignments.csv's row i; every process writes its own rows into it
  (:func:`create_embeddings`).

``--mode=predict`` writes its ``predictions.csv`` with the same columns
(:func:`assignment_rows`) and its ``embeddings.npy``, batch by batch
(:func:`write_predictions`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence

import numpy as np

from jcc import evaluate
from jcc import files

# Clusters shown in clusters.png at most (the largest ones), and images per row.
MAX_GRID_CLUSTERS = 40
GRID_IMAGES = 10
REPORT = 'report'


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def most_confident(assigned: np.ndarray, confidence: np.ndarray,
                   cluster: int, count: int) -> np.ndarray:
  """Indices of the ``count`` most confident members of ``cluster``."""
  members = np.flatnonzero(assigned == cluster)
  order = np.argsort(-confidence[members], kind='stable')
  return members[order[:count]]


def plot_cluster_grid(path: str, images: np.ndarray, assigned: np.ndarray,
                      confidence: np.ndarray, num_clusters: int) -> None:
  """clusters.png: a row of each cluster's most confident images."""
  plt = _pyplot()
  sizes = np.bincount(assigned, minlength=num_clusters)
  clusters = np.arange(num_clusters)
  if num_clusters > MAX_GRID_CLUSTERS:
    clusters = np.sort(np.argsort(-sizes, kind='stable')[:MAX_GRID_CLUSTERS])
  rows = len(clusters)
  fig, axes = plt.subplots(rows, GRID_IMAGES, squeeze=False,
                           figsize=(GRID_IMAGES * 0.8 + 1.2, rows * 0.8 + 0.6))
  gray = images.shape[-1] == 1
  for row, cluster in enumerate(clusters):
    shown = most_confident(assigned, confidence, cluster, GRID_IMAGES)
    for col in range(GRID_IMAGES):
      ax = axes[row, col]
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if col < len(shown):
        image = images[shown[col]]
        ax.imshow(image[..., 0] if gray else image,
                  cmap='gray' if gray else None, vmin=0, vmax=255)
    axes[row, 0].set_ylabel(f'{cluster}\n(n={sizes[cluster]})', rotation=0,
                            ha='right', va='center', fontsize=8)
  title = 'Most confident images per cluster (cluster head)'
  if rows < num_clusters:
    title += f': the {rows} largest of {num_clusters} clusters'
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save_png(fig, path)
  plt.close(fig)


def _save_png(fig, path: str) -> None:
  with files.atomic_write(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=80)


def matched_confusion(labels: np.ndarray, assigned: np.ndarray,
                      num_clusters: int) -> tuple[np.ndarray, np.ndarray]:
  """(counts[class, column], cluster of each column): Hungarian column order.

  Columns are the clusters, the one matched to class c at position c; the
  unmatched clusters (K > classes) follow.
  """
  counts, classes, clusters = evaluate.hungarian_match(
      labels, assigned, num_clusters)
  order = list(clusters[np.argsort(classes)])
  order += [c for c in range(num_clusters) if c not in order]
  return counts[:, order], np.asarray(order)


def plot_confusion(path: str, labels: np.ndarray, assigned: np.ndarray,
                   num_clusters: int, class_names: Sequence[str] | None,
                   accuracy: float) -> None:
  """confusion.png: true class (rows) × matched cluster (columns)."""
  plt = _pyplot()
  counts, order = matched_confusion(labels, assigned, num_clusters)
  num_classes = counts.shape[0]
  names = list(class_names) if class_names is not None and len(
      class_names) == num_classes else [str(c) for c in range(num_classes)]
  side = max(4.0, 0.45 * max(num_classes, num_clusters) + 2.0)
  fig, ax = plt.subplots(figsize=(side, side * 0.85))
  ax.imshow(counts, cmap='Blues')
  if max(num_classes, num_clusters) <= 30:
    top = counts.max()
    for (row, col), value in np.ndenumerate(counts):
      if value:
        ax.text(col, row, str(value), ha='center', va='center', fontsize=7,
                color='white' if value > top / 2 else 'black')
    ax.set_xticks(range(num_clusters), [str(c) for c in order])
    ax.set_yticks(range(num_classes), names)
  ax.set_xlabel('cluster (ordered by its Hungarian match to the classes)')
  ax.set_ylabel('true class')
  ax.set_title(f'Confusion after matching: ACC {accuracy:.3f}', fontsize=10)
  fig.tight_layout()
  _save_png(fig, path)
  plt.close(fig)


def write_report(
    workdir: str,
    images: np.ndarray,
    labels: np.ndarray | None,
    assignments: dict[str, np.ndarray],
    results: dict,
    class_names: Sequence[str] | None = None,
    image_names: Sequence[str] | None = None,
) -> str:
  """Writes WORKDIR/report/ (see the module docstring) but its
  embeddings.npy (:func:`create_embeddings`); returns its path.

  ``assignments``: each image's ``cluster`` (the cluster head's), its
  ``confidence`` and its ``dec_cluster``.

  ``image_names``: each image's file, written beside its index in
  assignments.csv (an index alone stops matching a sorted listing once a
  bad file was skipped).
  """
  out = os.path.join(workdir, REPORT)
  files.check_writable_folder(out)
  os.makedirs(out, exist_ok=True)
  assigned, confidence = assignments['cluster'], assignments['confidence']
  dec = assignments['dec_cluster']
  k = results['num_clusters']
  plot_cluster_grid(os.path.join(out, 'clusters.png'), images, assigned,
                    confidence, k)
  if labels is not None:
    plot_confusion(os.path.join(out, 'confusion.png'), labels, assigned, k,
                   class_names, results['cluster_head']['acc'])
  with files.atomic_write(os.path.join(out, 'metrics.txt')) as f:
    f.write(evaluate.format_results_table(results) + '\n')
  sizes = np.bincount(assigned, minlength=k)
  dec_sizes = np.bincount(dec, minlength=k)
  with files.atomic_write(os.path.join(out, 'cluster_sizes.csv'),
                          newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['cluster', 'images_cluster_head', 'images_dec'])
    writer.writerows(zip(range(k), sizes.tolist(), dec_sizes.tolist()))
  leading = {'index': range(len(assigned))}
  if image_names is not None:
    leading['image'] = image_names
  leading['label'] = [''] * len(assigned) if labels is None else (
      labels.tolist())
  write_assignments(os.path.join(out, 'assignments.csv'),
                    assignment_rows(leading, assigned, confidence, dec))
  return out


# The report's embeddings: written by every process, each its own rows, into
# one file that replaces the previous one when all are done.
EMBEDDINGS = 'embeddings.npy'


def _embeddings_partial(workdir: str) -> str:
  return os.path.join(workdir, REPORT, f'.{EMBEDDINGS}.rows.partial')


def create_embeddings(workdir: str, count: int, dim: int) -> None:
  """Starts WORKDIR/report/embeddings.npy ((count, dim) float32, row i for
  assignments.csv's row i): a partial file of its full length, which
  :func:`write_embedding_rows` fills (each process its rows) and
  :func:`finish_embeddings` puts in place. One process creates it."""
  path = _embeddings_partial(workdir)
  with open(path, 'wb') as f:
    np.lib.format.write_array_header_1_0(f, {
        'descr': '<f4', 'fortran_order': False, 'shape': (count, dim)})
    f.truncate(f.tell() + 4 * count * dim)


def write_embedding_rows(workdir: str, embeddings: np.ndarray,
                         rows: np.ndarray) -> None:
  """Writes ``embeddings`` at their ``rows`` of the file
  :func:`create_embeddings` started (byte ranges: processes on other hosts
  write the rest of the same file), and syncs them to disk."""
  if not len(rows):
    return
  order = np.argsort(rows, kind='stable')
  rows = np.asarray(rows)[order]
  values = np.ascontiguousarray(np.asarray(embeddings)[order], '<f4')
  runs = np.flatnonzero(np.diff(rows) != 1) + 1
  with open(_embeddings_partial(workdir), 'r+b') as f:
    np.lib.format.read_magic(f)
    np.lib.format.read_array_header_1_0(f)
    start = f.tell()
    row_bytes = values[:1].nbytes
    for first, end in zip(np.r_[0, runs], np.r_[runs, len(rows)]):
      os.pwrite(f.fileno(), values[first:end].tobytes(),
                start + int(rows[first]) * row_bytes)
    f.flush()
    os.fsync(f.fileno())


def finish_embeddings(workdir: str) -> str:
  """Puts the filled file in place of WORKDIR/report/embeddings.npy (one
  process, once every process has written its rows); returns its path."""
  path = os.path.join(workdir, REPORT, EMBEDDINGS)
  os.chmod(_embeddings_partial(workdir), 0o644 & ~files.umask())
  os.replace(_embeddings_partial(workdir), path)
  return path


def assignment_rows(leading: dict[str, Sequence], cluster: np.ndarray,
                    confidence: np.ndarray, dec_cluster: np.ndarray
                    ) -> list[dict]:
  """One dict per image: the ``leading`` columns, then its assignments:
  ``cluster`` (the cluster head's argmax), ``confidence`` (its
  probability), ``dec_cluster`` (DEC's, the nearest centroid)."""
  columns = {name: list(values) for name, values in leading.items()}
  return [{**{name: values[i] for name, values in columns.items()},
           'cluster': int(c), 'confidence': float(p), 'dec_cluster': int(d)}
          for i, (c, p, d) in enumerate(zip(cluster, confidence,
                                            dec_cluster))]


def head_assignments(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``cluster``, ``confidence`` and ``dec_cluster`` of model outputs."""
  return {'cluster': outputs['cluster_probs'].argmax(1),
          'confidence': outputs['cluster_probs'].max(1),
          'dec_cluster': outputs['student_t'].argmax(1)}


def write_assignments(path: str, rows: list[dict]) -> None:
  """:func:`assignment_rows` as a CSV, confidences to 4 decimals.

  Written whole or not at all (:func:`jcc.files.atomic_write`), UTF-8, text
  cells neutralised against spreadsheet formulas (:func:`jcc.files.csv_cell`).
  """
  with files.atomic_write(path, newline='', encoding='utf-8') as f:
    _write_rows(f, rows)


def _write_rows(f, rows: list[dict], header: bool = True) -> None:
  writer = csv.DictWriter(f, fieldnames=list(rows[0]))
  if header:
    writer.writeheader()
  writer.writerows(
      {name: files.csv_cell(value) for name, value in
       dict(row, confidence=f'{row["confidence"]:.4f}').items()}
      for row in rows)


PREDICTIONS = ('predictions.csv', 'embeddings.npy')


def write_predictions(folder: str, names: Sequence[str],
                      batches: Iterable[dict[str, np.ndarray]],
                      num_clusters: int) -> np.ndarray:
  """FOLDER/predictions.csv (:func:`assignment_rows`, one row per name)
  and FOLDER/embeddings.npy ((N, D) float32, row i the embedding of the
  CSV's row i), from the outputs of ``names``' images, batch by batch in
  their order (:meth:`jcc.inference.Predictor.batches`): memory holds one
  batch, not the set.

  The two files are one unit: both are written in full before either
  replaces the pair already there, so a full disk or an interrupted run
  leaves that pair as it was. Returns the images per cluster (K,).
  """
  csv_path, npy_path = (os.path.join(folder, name) for name in PREDICTIONS)
  sizes = np.zeros(num_clusters, np.int64)
  with files.atomic_write(csv_path, newline='', encoding='utf-8') as f, \
      files.atomic_write(npy_path, 'wb') as g:
    done = 0
    for outputs in batches:
      embedding = np.ascontiguousarray(outputs['embedding'], '<f4')
      if not done:  # np.load's header, for the whole (N, D) array
        np.lib.format.write_array_header_1_0(g, {
            'descr': '<f4', 'fortran_order': False,
            'shape': (len(names), embedding.shape[1])})
      rows = assignment_rows({'image': names[done:done + len(embedding)]},
                             **head_assignments(outputs))
      _write_rows(f, rows, header=not done)
      g.write(embedding.tobytes())
      sizes += np.bincount([row['cluster'] for row in rows],
                           minlength=num_clusters)
      done += len(rows)
    if done != len(names):
      raise ValueError(f'{done} predictions for {len(names)} images.')
    for written in (f, g):  # on disk before the first rename
      written.flush()
      os.fsync(written.fileno())
  return sizes


def cluster_sizes(batches: Iterable[dict[str, np.ndarray]],
                  num_clusters: int) -> np.ndarray:
  """The images per cluster (K,) of batches of outputs."""
  sizes = np.zeros(num_clusters, np.int64)
  for outputs in batches:
    sizes += np.bincount(outputs['cluster_probs'].argmax(1),
                         minlength=num_clusters)
  return sizes
