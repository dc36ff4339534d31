"""One process of a multi-process training run on this machine (CPU collectives over gloo), for
tests/test_multiprocess.py: `python -m tests.helpers.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT OUT_DIR`.

Each process joins `jax.distributed.initialize` with a localhost coordinator, reads only its own slice of each
global batch (rows process_id * G/P ..), trains the engine's toy regression job, and writes its final parameters
to OUT_DIR/params-<process_id>.npz and the rows it read to OUT_DIR/rows-<process_id>.json.
"""

import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = ""  # One CPU device per process.


def main(process_id: int, num_processes: int, port: int, out_dir: pathlib.Path) -> None:
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                             process_id=process_id)
  import itertools
  import numpy as np
  from ldlg.engine import parallel
  from ldlg.engine import trainer
  from tests import test_engine

  batch_size, rows_read = 8, []
  share = batch_size // num_processes

  def batches(start_step):
    for step in itertools.count(start_step):
      full = next(test_engine.toy_batches(1, batch_size)(step))  # The global batch, [1, G, ...].
      mine = {k: v[0, process_id * share:(process_id + 1) * share] for k, v in full.items()}
      rows_read.append(mine["example_index"].tolist())
      yield parallel.shard_batch(mine, jax.local_device_count())

  job = test_engine.toy_job()
  job.batches = batches
  run = trainer.TrainRun(directory=out_dir / "run", num_steps=6, log_every=2, ckpt_every=3, desc="toy",
                         is_primary=jax.process_index() == 0)
  result = trainer.train(job, run)
  params = jax.device_get(result.state.params)
  np.savez(out_dir / f"params-{process_id}.npz", **{k: np.asarray(v) for k, v in params.items()})
  (out_dir / f"rows-{process_id}.json").write_text(json.dumps(rows_read[:6]))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4]))
