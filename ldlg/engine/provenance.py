"""Where a result came from, and whether it is still current.

`samples.jsonl` records, on every line, the checkpoint step, the config hash (without the `eval` section) and the
seed it was drawn with; `metrics.json` records the samples file's hash, the config hash and the checkpoint step.
The pipeline treats a stage as done only when its output is *current*: samples from an older checkpoint or
another sampling config are drawn again, and metrics of other samples are computed again — nothing stale is
reported as done.
"""

import hashlib
import json
import pathlib

import ml_collections

from ldlg.engine import checkpoints
from ldlg.engine.workdir import BOOKKEEPING_FIELDS
from ldlg.engine.workdir import without_optional_sections


def config_hash(config: ml_collections.ConfigDict, *, without: tuple[str, ...] = ()) -> str:
  """A short hash of the config's JSON, leaving out the named top-level sections and the bookkeeping fields."""
  data = {k: v for k, v in without_optional_sections(json.loads(config.to_json())).items() if k not in without}
  for section, fields in BOOKKEEPING_FIELDS.items():
    if isinstance(data.get(section), dict):
      data[section] = {k: v for k, v in data[section].items() if k not in fields}
  return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def latest_step(checkpoint_dir: pathlib.Path) -> int | None:
  if not pathlib.Path(checkpoint_dir).exists():
    return None
  ckpt = checkpoints.Checkpointer(checkpoint_dir)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def sample_provenance(config: ml_collections.ConfigDict, checkpoint_step: int | None) -> dict:
  """The fields every line of samples.jsonl carries."""
  return {"checkpoint_step": checkpoint_step, "config_hash": config_hash(config, without=("eval",)),
          "seed": config.sample.seed}


def samples_current(config: ml_collections.ConfigDict, samples_file: pathlib.Path,
                    checkpoint_dir: pathlib.Path) -> bool:
  """Whether samples.jsonl exists and was drawn from the latest checkpoint with this sampling config."""
  if not samples_file.exists():
    return False
  with open(samples_file, encoding="utf-8") as f:
    first = f.readline()
  try:
    record = json.loads(first)
  except ValueError:
    return False
  wanted = sample_provenance(config, latest_step(checkpoint_dir))
  return all(record.get(k) == v for k, v in wanted.items())


def metrics_provenance(config: ml_collections.ConfigDict, samples_file: pathlib.Path) -> dict:
  with open(samples_file, encoding="utf-8") as f:
    first = json.loads(f.readline() or "{}")
  return {"samples_sha256": file_sha256(samples_file), "config_hash": config_hash(config),
          "checkpoint_step": first.get("checkpoint_step"), "seed": first.get("seed")}


def metrics_current(config: ml_collections.ConfigDict, metrics_file: pathlib.Path,
                    samples_file: pathlib.Path) -> bool:
  """Whether metrics.json exists and scores the current samples.jsonl with this config."""
  if not metrics_file.exists() or not samples_file.exists():
    return False
  try:
    saved = json.loads(metrics_file.read_text(encoding="utf-8")).get("provenance", {})
  except ValueError:
    return False
  return saved.get("samples_sha256") == file_sha256(samples_file) and saved.get("config_hash") == config_hash(config)
