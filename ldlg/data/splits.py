"""Reading a split's records for a run: the dataset's TFDS builder, capped at config.data.max_examples."""

from ldlg.engine.workdir import Workdir


def load_texts(config, data_dir, workdir: Workdir, split: str) -> list[dict]:
  """Records of a split (at most config.data.max_examples), read through the TFDS builder."""
  from ldlg.data import datasets
  records = datasets.load_split(config.data.name, split, data_dir, tfds_dir=workdir.tfds_dir)
  limit = config.data.max_examples
  n = len(records) if not limit else min(limit, len(records))
  return SplitRecords([records[i] for i in range(n)], getattr(records, "provenance", {}))


class SplitRecords(list):
  """A list of records that also carries the raw files' provenance (`datasets.raw_data_provenance`), which the
  precompute stage writes into the latent manifest."""

  def __init__(self, records, provenance):
    super().__init__(records)
    self.provenance = dict(provenance or {})
