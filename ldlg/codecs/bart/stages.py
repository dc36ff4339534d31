"""The BART codec's own stages: pretraining our BART (offline configs) and the latent precompute.

pretrain_autoencoder  <workdir>/autoencoder/: tokenizer + BART (HF format), reconstruction.json marks it done
                      (only when config.autoencoder.pretrain)
precompute            <workdir>/latents/<split>/: latent shards; manifest.json with "complete": true marks it done.
                      With `config.codec = "bart_compressed"` the latents are the compression network's [N, w]
                      (`ldlg.codecs.compression`, trained by the train_compression stage in between)
finetune_decoder      <workdir>/decoder/: the BART with its decoder fine-tuned on noised latents, encoder frozen
                      (`ldlg.codecs.bart.decoder_finetune`); decoder_finetune.json marks it done. Only when
                      config.decoder_finetune.noise_std > 0; sampling then decodes with it
"""

import json
import shutil

from absl import logging

from ldlg.codecs import uses_compression
from ldlg.codecs.bart import codec as bart_codec
from ldlg.data.splits import load_texts
from ldlg.engine import signals
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir


def pretrain_autoencoder(config, workdir: Workdir, data_dir) -> None:
  if not config.autoencoder.pretrain:
    logging.info("config.autoencoder.pretrain is False: using the pretrained %s.", config.autoencoder.name)
    return
  from ldlg.codecs.bart import pretrain
  train = pretraining_texts(config, load_texts(config, data_dir, workdir, config.data.train_split))
  valid = pretraining_texts(config, load_texts(config, data_dir, workdir, config.data.eval_split))
  result = pretrain.pretrain_autoencoder(config.autoencoder, train, valid, workdir.autoencoder_dir)
  if result.get("stopped_by") == "signal":
    raise signals.Interrupted(f"autoencoder pretraining was interrupted at step {result['step']} (checkpoint "
                              "saved)")
  logging.info("Autoencoder: %s", json.dumps({k: v for k, v in result.items() if k != "out_dir"}))


def pretraining_texts(config, records) -> list[str]:
  """The texts BART pretrains on: the targets, and with `config.autoencoder.include_source` (sequence-to-sequence
  LD4LG) each distinct source too, so the frozen encoder has learned to read the sources it will encode."""
  texts = [r["text"] for r in records]
  if config.autoencoder.get("include_source", False):
    if records and "source" not in records[0]:
      raise ValueError(f"config.autoencoder.include_source is set but {config.data.name} has no source field; "
                       "unset it or use a seq2seq dataset (E2E, QQP)")
    texts += list(dict.fromkeys(r["source"] for r in records))
  return texts


def pretrain_done(config, workdir: Workdir, data_dir=None) -> bool:
  return not config.autoencoder.pretrain or (workdir.autoencoder_dir / "reconstruction.json").exists()


def latent_encoder(config, workdir: Workdir):
  """What the precompute encodes with: the frozen BART, or BART and the compression network (config.codec)."""
  if uses_compression(config):
    from ldlg.codecs.compression import codec as compression_codec  # pylint: disable=import-outside-toplevel
    compression_codec.check_model_fits(config)
    return compression_codec.CompressedEncoder(compression_codec.CompressedBartCodec.from_config(config, workdir))
  return bart_codec.load_autoencoder(config, workdir)


def precompute(config, workdir: Workdir, data_dir) -> None:
  from ldlg.data import datasets
  encoder = latent_encoder(config, workdir)
  if uses_compression(config):
    _drop_latents_of_other_compression(config, workdir)
  spec, _ = datasets.get_spec(config.data.name)
  with signals.RaiseOnSignal("the latent precompute"):  # Shards are written atomically; done ones are kept.
    precompute_splits(config, workdir, data_dir, encoder, spec)


def precompute_splits(config, workdir, data_dir, autoencoder, spec) -> None:
  from ldlg.data import precompute as precompute_lib
  for split in dict.fromkeys((config.data.train_split, config.data.eval_split)):
    records = load_texts(config, data_dir, workdir, split)
    manifest = precompute_lib.precompute_latents(
        autoencoder, records, workdir.root / "latents", split=split, dtype=config.data.latent_dtype,
        shard_size=config.data.shard_size, batch_size=config.data.encode_batch_size,
        label_set=spec.label_set if config.model.num_classes > 0 else None,
        compute_stats=split == config.data.train_split)
    logging.info("Latents for %s: %d examples, text stats %s", split, manifest["num_examples"],
                 manifest["text_stats"])


def precompute_done(config, workdir: Workdir, data_dir=None) -> bool:
  """Complete latents for both splits, made from the raw files there are now (when they can be read)."""
  fingerprint = None
  if data_dir is not None:
    from ldlg.data import datasets
    try:
      fingerprint = datasets.raw_data_fingerprint(config.data.name, data_dir)
    except Exception:  # pylint: disable=broad-except  (no raw data here: judge by the manifest alone)
      fingerprint = None
  for split in (config.data.train_split, config.data.eval_split):
    manifest = workdir.latents_dir(split) / "manifest.json"
    if not manifest.exists():
      return False
    m = json.loads(manifest.read_text())
    if not m.get("complete"):
      return False
    if uses_compression(config) and not _made_with_current_compression(m, workdir):
      logging.info("The latents in %s were not made with the compression network there is now: recomputing them.",
                   manifest.parent)
      return False
    made_from = (m.get("provenance") or {}).get("fingerprint")
    if fingerprint and made_from and made_from != fingerprint:
      logging.warning("The raw %s data changed since the latents in %s were computed: recomputing them.",
                      config.data.name, manifest.parent)
      return False
  return True


def _drop_latents_of_other_compression(config, workdir: Workdir) -> None:
  """Latents encoded through earlier compression weights (the network was retrained) are deleted, not resumed
  (the precompute would refuse a folder written by another encoder)."""
  for split in dict.fromkeys((config.data.train_split, config.data.eval_split)):
    manifest = workdir.latents_dir(split) / "manifest.json"
    if manifest.exists() and not _made_with_current_compression(json.loads(manifest.read_text()), workdir):
      logging.info("Deleting %s: encoded with other compression weights.", manifest.parent)
      shutil.rmtree(manifest.parent)


def _made_with_current_compression(manifest: dict, workdir: Workdir) -> bool:
  """Whether a latent manifest names the compression weights there are now (`CompressedEncoder.name`)."""
  from ldlg.codecs.compression import codec as compression_codec  # pylint: disable=import-outside-toplevel
  weights = compression_codec.compression_dir(workdir) / compression_codec.WEIGHTS_FILE
  return weights.exists() and manifest["autoencoder"].endswith(
      compression_codec.weights_tag(compression_codec.weights_digest(weights)))


def finetune_decoder(config, workdir: Workdir, data_dir) -> None:
  from ldlg.codecs.bart import decoder_finetune  # pylint: disable=import-outside-toplevel
  if not decoder_finetune.enabled(config):
    logging.info("config.decoder_finetune.noise_std is 0: decoding with the autoencoder's own decoder.")
    return
  if uses_compression(config):
    raise ValueError("config.decoder_finetune applies to the plain BART latents; the compression network "
                     "(config.codec='bart_compressed') trains its decoding side with noise itself "
                     "(config.compression.train_noise_std): set decoder_finetune.noise_std=0")
  if workdir.decoder_dir.exists() and not finetune_decoder_done(config, workdir):
    if (workdir.decoder_dir / decoder_finetune.DONE_FILE).exists():  # Done with another config: made again.
      logging.info("Deleting %s: fine-tuned with another decoder_finetune config.", workdir.decoder_dir)
      shutil.rmtree(workdir.decoder_dir)
  store = bart_codec.open_latent_store(config, workdir, config.data.train_split)
  latent_std = bart_codec.latent_stats(store)["std"]
  train = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.train_split)]
  valid = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.eval_split)]
  result = decoder_finetune.finetune_decoder(
      config.decoder_finetune, bart_codec.load_autoencoder(config, workdir), train, latent_std, workdir.decoder_dir,
      eval_texts=valid, decode_kwargs=bart_codec.decode_settings(config.autoencoder))
  if result.get("stopped_by") == "signal":
    raise signals.Interrupted(f"the decoder fine-tune was interrupted at step {result['step']} (checkpoint saved)")
  logging.info("Decoder fine-tune: %s", json.dumps({k: v for k, v in result.items() if k not in ("params",)}))


def finetune_decoder_done(config, workdir: Workdir, data_dir=None) -> bool:
  """Off, or done with this decoder_finetune config."""
  from ldlg.codecs.bart import decoder_finetune  # pylint: disable=import-outside-toplevel
  if not decoder_finetune.enabled(config):
    return True
  done = workdir.decoder_dir / decoder_finetune.DONE_FILE
  return done.exists() and json.loads(done.read_text())["decoder_finetune"] == config.decoder_finetune.to_dict()


PRETRAIN = Stage("pretrain_autoencoder", pretrain_autoencoder, pretrain_done)
PRECOMPUTE = Stage("precompute", precompute, precompute_done)
FINETUNE_DECODER = Stage("finetune_decoder", finetune_decoder, finetune_decoder_done)
