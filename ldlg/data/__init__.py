"""TFDS dataset builders, the text pipeline, the latent precompute job and the latent store reader.

Modules (import the one you need; nothing heavy is imported here):
  datasets      `DATASETS` registry and `load_split(name, split, data_dir, tfds_dir=...)`.
  builders/     the TFDS builders (array_record, no TensorFlow needed).
  text          cleaning/validation with counted outcomes (`clean_records`, `TextStats`).
  precompute    `precompute_latents(autoencoder, records, out_dir, split=...)`.
  latent_store  `LatentStore(path)`: stats, length histogram, random access, pmap-shaped batches.
  testing       a word tokenizer and a deterministic hashing encoder for CPU tests.
"""
