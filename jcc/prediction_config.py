"""The config of ``--mode=predict`` when no --config is given: the saved
model in the workdir brings everything else (jcc.trained_model).

Only what prediction itself reads: the images to assign, how unreadable
image files are treated, and the processes of a run on several hosts.
"""

import ml_collections

from jcc.configs import default


def get_config() -> ml_collections.ConfigDict:
  full = default.get_config()
  config = ml_collections.ConfigDict()
  config.predict = full.predict
  config.dataset = ml_collections.ConfigDict(
      {'skip_bad_images': full.dataset.skip_bad_images})
  config.distributed = full.distributed
  return config
