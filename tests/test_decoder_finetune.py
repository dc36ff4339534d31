"""The BART decoder fine-tuned on noised latents (ldlg/codecs/bart/decoder_finetune.py): the encoder and the shared
embeddings stay bit-identical (the latents and the denoisers on them stay valid), stop-and-resume equals an
uninterrupted run, two devices equal one, the exported BART loads, and a run with it on decodes with it while its
samples' provenance is untouched when it is off.

The BART is a randomly initialised tiny one (width 16, no dropout) with a tokenizer trained on a synthetic corpus:
the test checks the training plumbing and its exactness; what the fine-tune buys is measured in the README.
"""
import json

import jax
import numpy as np
import pytest

from configs import sst
from ldlg.codecs.bart import decoder_finetune
from ldlg.codecs.bart.autoencoder import Autoencoder
from ldlg.engine import provenance
from ldlg.engine.workdir import Workdir


def _cfg(num_steps, noise_std=1.0):
  cfg = decoder_finetune.default_config()
  cfg.update(noise_std=noise_std, num_steps=num_steps, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1,
             checkpoint_every=100, eval_num_sentences=4)
  return cfg


def test_split_and_merge_are_inverse_and_split_the_decoder_from_the_encoder(tiny_bart):
  ae, _ = tiny_bart
  trainable, frozen = decoder_finetune.split_params(ae.params)
  assert set(trainable) == {"decoder", "final_logits_bias"}
  assert "encoder" in frozen["model"] and "shared" in frozen["model"] and "decoder" not in frozen["model"]
  merged = decoder_finetune.merge_params(trainable, frozen)
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(ae.params)
  jax.tree.map(np.testing.assert_array_equal, merged, ae.params)


@pytest.mark.slow
def test_finetune_keeps_the_encoder_resumes_exactly_and_two_devices_equal_one(tiny_bart, tmp_path):
  ae, texts = tiny_bart
  one = jax.local_devices()[:1]
  straight = decoder_finetune.finetune_decoder(_cfg(6), ae, texts, 1.5, tmp_path / "straight", eval_texts=texts[:4],
                                               decode_kwargs=dict(num_beams=1, max_length=8), devices=one)
  # The encoder and the shared embeddings (encoder input, tied LM head) are bit-identical; the decoder moved.
  for part in ("encoder", "shared"):
    jax.tree.map(np.testing.assert_array_equal, straight["params"]["model"][part], ae.params["model"][part])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), straight["params"]["model"]["decoder"],
                                       ae.params["model"]["decoder"]))
  assert max(moved) > 0
  log = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  assert len(log) == 6 and all(np.isfinite(r["loss"]) and 0 < r["noise_std_mean"] < 1.0 for r in log)
  # Exported: the BART loads from the folder with the fine-tuned parameters; the done file records the scores.
  tuned = Autoencoder.from_pretrained(str(tmp_path / "straight"), max_length=16)
  jax.tree.map(np.testing.assert_array_equal, tuned.params, straight["params"])
  np.testing.assert_array_equal(tuned.encode(texts[:3])[0], ae.encode(texts[:3])[0])  # The same latents.
  done = json.loads((tmp_path / "straight" / decoder_finetune.DONE_FILE).read_text())
  assert done["decoder_finetune"] == _cfg(6).to_dict() and done["latent_std"] == 1.5
  assert [r["noise_std"] for r in done["robustness"]["after"]] == [0.0, 0.5]
  # Stopped at step 3, as a preemption would, then resumed: the uninterrupted run's parameters.
  first = decoder_finetune.finetune_decoder(_cfg(6), ae, texts, 1.5, tmp_path / "resumed", stop_after_step=3,
                                            devices=one)
  assert first["stopped_by"] == "stop_at" and not (tmp_path / "resumed" / decoder_finetune.DONE_FILE).exists()
  resumed = decoder_finetune.finetune_decoder(_cfg(6), ae, texts, 1.5, tmp_path / "resumed", devices=one)
  assert resumed["resumed_from"] == 3 and resumed["step"] == 6
  jax.tree.map(np.testing.assert_array_equal, resumed["params"], straight["params"])
  with pytest.raises(ValueError, match="another autoencoder, latent std or decoder_finetune config"):
    decoder_finetune.finetune_decoder(_cfg(6), ae, texts, 2.0, tmp_path / "resumed", devices=one)
  # Two devices: each example's noise is keyed on its global index and the loss is the global token mean.
  if jax.local_device_count() >= 2:
    two = decoder_finetune.finetune_decoder(_cfg(6), ae, texts, 1.5, tmp_path / "two", devices=jax.local_devices()[:2])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), two["params"], straight["params"])


def test_bad_inputs_are_refused(tiny_bart, tmp_path):
  ae, texts = tiny_bart
  with pytest.raises(ValueError, match="noise_std > 0"):
    decoder_finetune.finetune_decoder(_cfg(2, noise_std=0.0), ae, texts, 1.0, tmp_path / "a")
  with pytest.raises(ValueError, match="latent_std"):
    decoder_finetune.finetune_decoder(_cfg(2), ae, texts, 0.0, tmp_path / "b")
  with pytest.raises(ValueError, match="texts is empty"):
    decoder_finetune.finetune_decoder(_cfg(2), ae, [], 1.0, tmp_path / "c")


def test_a_run_decodes_with_it_only_when_on_and_its_samples_stay_current_when_off(tmp_path):
  from ldlg.codecs.bart.codec import BartLatentCodec
  from ldlg.codecs.bart import stages as bart_stages
  config = sst.get_config("cpu")
  assert not decoder_finetune.enabled(config)
  off_hash = provenance.config_hash(config)
  without = config.copy_and_resolve_references()
  del without["decoder_finetune"]
  # Off, the section is left out of the samples' provenance: samples drawn before it existed stay current.
  assert provenance.config_hash(without) == off_hash
  wd = Workdir(tmp_path)
  assert bart_stages.finetune_decoder_done(config, wd)  # Off: nothing to do.
  config.decoder_finetune.noise_std = 1.0
  assert provenance.config_hash(config) != off_hash and not bart_stages.finetune_decoder_done(config, wd)
  with pytest.raises(FileNotFoundError, match="--mode=finetune_decoder"):
    BartLatentCodec.from_config(config, wd)
  wd.decoder_dir.mkdir()
  (wd.decoder_dir / decoder_finetune.DONE_FILE).write_text(json.dumps(
      {"decoder_finetune": config.decoder_finetune.to_dict()}))
  assert bart_stages.finetune_decoder_done(config, wd)
  config.decoder_finetune.num_steps += 1  # Done with another config: not done for this one.
  assert not bart_stages.finetune_decoder_done(config, wd)


@pytest.mark.slow
def test_a_trained_tiny_run_takes_up_a_fine_tuned_decoder_without_retraining(tiny_cli_run, tmp_path, data_dir):
  import shutil
  from configs import tiny
  from ldlg import pipeline
  from ldlg.methods.gaussian.text_sampler import TextSampler
  wd = Workdir(tmp_path / "run")
  shutil.copytree(tiny_cli_run, wd.root, symlinks=True)
  config = tiny.get_config()
  before = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  config.decoder_finetune.update(noise_std=1.0, num_steps=3, batch_size=8, log_every=1, eval_num_sentences=4)
  assert not pipeline.stage_done("finetune_decoder", config, wd, data_dir)
  assert pipeline.stage_done("train", config, wd, data_dir)  # The denoiser's training stays done...
  for stage in ("finetune_decoder", "sample"):  # ...and the saved config accepts the change (decoding only).
    pipeline.run(stage, config, wd.root, data_dir=data_dir)
  assert (wd.decoder_dir / decoder_finetune.DONE_FILE).exists()
  sampler = TextSampler.from_workdir(config, wd)
  assert sampler.codec.autoencoder.name == str(wd.decoder_dir)  # ...and sampling decodes with the new decoder,
  after = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  assert len(after) == len(before) and after[0]["config_hash"] != before[0]["config_hash"]  # drawn again.
  assert [r["length"] for r in after] == [r["length"] for r in before]  # Same seed: the same latents' lengths.
