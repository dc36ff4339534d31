"""TFDS dataset builders, the text pipeline, the latent precompute job and the latent store reader.

Modules (import the one you need; nothing heavy is imported here):
  errors        `DataError`: bad input data, with a message naming file, line or row, and the fix.
  datasets      `DATASETS` registry, `load_split(name, split, data_dir, tfds_dir=...)` and
                `raw_data_fingerprint(name, data_dir)` (provenance of the raw files).
  builders/     the TFDS builders (array_record, no TensorFlow needed).
  fingerprint   content hashes of raw files (the prepared-data cache key).
  seq2seq       (source, target) pairs: `group_references` for multi-reference evaluation.
  text          cleaning/validation with counted outcomes (`clean_records`, `TextStats`).
  precompute    `precompute_latents(autoencoder, records, out_dir, split=...)`.
  latent_store  `LatentStore(path)`: stats, length histogram, random access, pmap-shaped batches.
  testing       a word tokenizer and a deterministic hashing encoder for CPU tests.
"""

from ldlg.data.errors import DataError

__all__ = ["DataError"]
