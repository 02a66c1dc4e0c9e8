"""The passes over the whole dataset between training steps."""

import numpy as np
import optax

from jcc import inference
from jcc import losses
from jcc import models
from jcc import parallel
from jcc import phases
from jcc import sources
from jcc import step
from tests.conftest import devices, tiny_config


def test_dec_target_fills_the_clustered_rows_where_the_devices_hold_them():
  config = tiny_config()
  digits = sources.load_dataset(config.dataset)
  n = 301  # the table is padded to 302 rows for 2 devices
  instance_only = np.arange(n) % 4 == 0  # STL-10's unlabelled split, say
  dataset = sources.ImageDataset('digits', digits.images[:n], None,
                                 instance_only=instance_only)
  mesh = parallel.make_mesh(devices(2))
  model = models.build_model(config, dataset.channels)
  run = step.init_run_state(model, optax.adam(1e-3), config,
                            dataset.images.shape[1:], mesh, ~instance_only)
  # Batches of 128 of the 225 clustered images: the last one padded.
  passes = phases.DatasetPasses(config, dataset, mesh,
                                inference.Predictor(model, mesh, 128))
  q = passes.outputs(run.train)['student_t']
  expected = np.zeros((302, 10), np.float32)
  expected[np.flatnonzero(~instance_only)] = losses.target_distribution(q)
  run = passes.with_target(run)
  np.testing.assert_allclose(np.asarray(run.target), expected, rtol=1e-5,
                             atol=1e-7)
  assert run.target.sharding.is_equivalent_to(
      parallel.shardings(mesh).batch, 2)
