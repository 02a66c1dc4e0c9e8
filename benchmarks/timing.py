"""Alternating wall-clock timing shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def measure_alternating(runs: dict[str, Callable[[], object]], rounds: int,
                        min_seconds: float) -> dict[str, float]:
  """Median seconds per call of each runner, measured in alternation.

  Each runner is called twice first (warm-up, compilation). Then, for each
  round, each runner in turn is called until ``min_seconds`` have passed;
  alternating keeps slow drifts of the machine from favouring one side.
  Runners must block until their work is done.
  """
  for run in runs.values():
    run()
    run()
  per_call = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      n, start = 0, time.perf_counter()
      while True:
        run()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
          break
      per_call[name].append(elapsed / n)
  return {name: statistics.median(t) for name, t in per_call.items()}
