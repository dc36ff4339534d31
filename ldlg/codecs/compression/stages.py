"""The compressed codec's own stage: training the compression network of LD4LG's later version.

train_compression  <workdir>/compression/: the network trained through the frozen BART on the train split's texts
                   (`ldlg.codecs.compression.train`: pmapped, Orbax checkpoints, exact resume); then
                   decode(encode(x)) of `config.autoencoder.eval_num_sentences` held-out sentences with the run's
                   decoding, written to reconstruction.json, which marks the stage done. With the plain BART codec
                   (`config.codec` unset or "bart_latents") the stage has nothing to do.

The compressed latents themselves are written by the usual precompute stage (`ldlg.codecs.bart.stages`), which
encodes through the network when `config.codec` is "bart_compressed".
"""
from __future__ import annotations

import json

from absl import logging
import ml_collections

from ldlg.codecs import codec_name, uses_compression
from ldlg.codecs.bart import codec as bart_codec
from ldlg.codecs.bart import reconstruction
from ldlg.codecs.compression import codec as compression_codec
from ldlg.data.latent_store import write_json_atomic
from ldlg.data.splits import load_texts
from ldlg.engine import signals
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir


def train_compression(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> None:
  if not uses_compression(config):
    logging.info("config.codec is %r: no compression network to train.", codec_name(config))
    return
  from ldlg.codecs.compression import train as compression_train  # pylint: disable=import-outside-toplevel
  compression_codec.check_model_fits(config)
  autoencoder = bart_codec.load_autoencoder(config, workdir)
  texts = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.train_split)]
  out_dir = compression_codec.compression_dir(workdir)
  result = compression_train.train_compression(config.compression, autoencoder, texts, out_dir)
  if result["stopped_by"] == "signal":
    raise signals.Interrupted(f"compression training was interrupted at step {result['step']} (checkpoint saved)")
  codec = compression_codec.CompressedBartCodec.from_config(config, workdir, autoencoder)
  held_out = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.eval_split)]
  held_out = held_out[:int(config.autoencoder.eval_num_sentences)]
  latents, _ = codec.encode(held_out)
  hypotheses = codec.decode(latents)
  scores = reconstruction.reconstruction_scores(hypotheses, held_out)
  scores["examples"] = [{"reference": r, "reconstruction": h} for r, h in list(zip(held_out, hypotheses))[:5]]
  report = {"split": config.data.eval_split, "decoding": codec.decode_kwargs, "final_loss": result["final_loss"],
            "step": result["step"], "identity": codec.identity(), "scores": scores}
  write_json_atomic(out_dir / compression_codec.DONE_FILE, report)
  logging.info("Compression network: %d held-out sentences reconstructed %.1f %% exactly (BLEU %.1f).",
               scores["num_sentences"], 100 * scores["exact_match"], scores["bleu"])


def train_compression_done(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  if not uses_compression(config):
    return True
  path = compression_codec.compression_dir(workdir)
  if not (path / compression_codec.DONE_FILE).exists():
    return False
  # Trained with this compression config (another one is refused by the training job, naming the fix).
  saved = json.loads((path / "compression_config.json").read_text())["compression"]
  return saved == config.compression.to_dict()


TRAIN_COMPRESSION = Stage("train_compression", train_compression, train_compression_done)
