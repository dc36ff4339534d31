"""A stage of a run: a named job with its own on-disk output, a test of whether that output is done, and whether
it runs on one host only. A method lists its stages (`Method.stages`); `ldlg.pipeline` runs them in order."""

import dataclasses
from typing import Callable

import ml_collections

from ldlg.engine.workdir import Workdir

StageFn = Callable[[ml_collections.ConfigDict, Workdir, object], object]
DoneFn = Callable[[ml_collections.ConfigDict, Workdir, object], bool]


@dataclasses.dataclass(frozen=True)
class Stage:
  """name: the --mode; run(config, workdir, data_dir); done(config, workdir, data_dir): its output exists and
  is current (made from the inputs there are now); single_host: in a multi-host job,
  process 0 runs it while the others wait (training runs on every host: pmap, sharded data)."""
  name: str
  run: StageFn
  done: DoneFn
  single_host: bool = True
