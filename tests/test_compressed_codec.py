"""LD4LG on the compression network's latents (`config.codec = "bart_compressed"`): the config links the denoiser
to the compressed [N, w], the pipeline trains the network as a stage, stores N x w latents with every position
valid, samples at length N and decodes through the network; retrained weights make the latents stale."""

import importlib
import json
import shutil

import flax.serialization
import jax
import numpy as np
import pytest

from configs import tiny
from ldlg import methods
from ldlg import pipeline
from ldlg.codecs.bart import stages as bart_stages
from ldlg.codecs.compression import codec as compression_codec
from ldlg.config_validation import ConfigError, validate_config
from ldlg.data.latent_store import LatentStore
from ldlg.data.text import token_lengths
from ldlg.engine.workdir import Workdir
from ldlg.methods.gaussian.method import GaussianDiffusion


@pytest.mark.parametrize("variant", ["cpu_compressed", "cpu_later_compressed"])
def test_variants_link_the_denoiser_to_the_compressed_latent_and_leave_bart_alone(variant):
  plain = importlib.import_module("configs.sst").get_config("cpu")
  config = importlib.import_module("configs.sst").get_config(variant)
  assert config.codec == "bart_compressed"
  assert (config.model.max_len, config.model.latent_dim) == (32, 64)  # The paper's 32 x 64.
  # BART still reads full sentences at its own width.
  assert (config.data.max_length, config.autoencoder.d_model) == (plain.data.max_length, plain.autoencoder.d_model)
  config.compression.num_latents, config.compression.latent_width = 16, 32
  assert (config.model.max_len, config.model.latent_dim) == (16, 32)
  assert config.data.max_length == plain.data.max_length
  validate_config(config)
  abstract = GaussianDiffusion.from_config(config).init_params(jax.random.PRNGKey(0), abstract=True)
  assert abstract["input_proj"]["kernel"].shape[0] in (32, 64)  # Latent width (x2 with concat self-conditioning).


def test_validation_names_a_denoiser_that_does_not_fit_and_a_method_that_cannot_use_it():
  config = importlib.import_module("configs.e2e").get_config("cpu_compressed")
  del config.model["max_len"]
  config.model.max_len = 40
  with pytest.raises(ConfigError, match=r"model.max_len.*32 \(= compression.num_latents"):
    validate_config(config)
  config = importlib.import_module("configs.e2e").get_config("diffuseq_cpu")
  config.codec = "bart_compressed"
  with pytest.raises(ConfigError, match="compressed latents are for LD4LG"):
    validate_config(config)
  config = importlib.import_module("configs.e2e").get_config("cpu")
  config.codec = "bart_zipped"
  with pytest.raises(ConfigError, match="codec.*bart_latents"):
    validate_config(config)


@pytest.mark.slow
def test_tiny_compressed_pipeline(tiny_cli_run, tmp_path, data_dir, caplog):
  config = tiny.get_config("compressed")
  config.eval.likelihood_examples = 0  # The latent likelihood is the plain LD4LG pipeline test's.
  n, w = config.compression.num_latents, config.compression.latent_width
  wd = Workdir(tmp_path / "wd")
  # The plain tiny run's BART (the same autoencoder and data config): the pipeline starts at train_compression,
  # as it does for a user who adds compression to a finished run.
  shutil.copytree(Workdir(tiny_cli_run).autoencoder_dir, wd.autoencoder_dir, symlinks=True)
  caplog.set_level("INFO")
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  assert "Stage pretrain_autoencoder: already done" in caplog.text
  report = json.loads((compression_codec.compression_dir(wd) / compression_codec.DONE_FILE).read_text())
  assert report["step"] == config.compression.num_steps
  assert report["scores"]["num_sentences"] == config.autoencoder.eval_num_sentences
  # N x w latents, every position valid; BART's truncation is counted against its own token limit.
  store = LatentStore(wd.latents_dir("validation"))
  assert (store.max_length, store.latent_dim) == (n, w) and (store.lengths == n).all()
  assert store.manifest["autoencoder"].endswith(
      "+compression:" + compression_codec.weights_digest(compression_codec.compression_dir(wd) / "compression.msgpack"))
  codec = compression_codec.CompressedBartCodec.from_config(config, wd)
  texts = store.string_column("text")
  longer = int((token_lengths(codec.autoencoder.tokenizer, texts) > config.data.max_length).sum())
  assert store.manifest["text_stats"]["truncated"] == longer < len(texts)
  # The stored latents are the codec's encoding (rounded to the storage dtype).
  z, mask = codec.encode(texts[:4])
  assert mask.all() and z.shape == (4, n, w)
  np.testing.assert_allclose(store.gather(np.arange(4), normalize=False)["latents"], z, atol=2e-2)
  records = [json.loads(l) for l in wd.samples_file.read_text().splitlines()]
  assert len(records) == config.sample.num_samples and {r["length"] for r in records} == {n}
  caplog.clear()
  pipeline.run("pipeline", config, wd.root, data_dir=data_dir)
  assert all(f"Stage {s.name}: already done" in caplog.text for s in methods.stages(config))
  # Other compression weights (a retrained network): the latents are stale, and the precompute rebuilds them.
  weights = compression_codec.compression_dir(wd) / "compression.msgpack"
  params = codec.compressor.params
  bumped = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1e-3, params)
  weights.write_bytes(flax.serialization.to_bytes(bumped))
  assert not bart_stages.precompute_done(config, wd, data_dir)
  pipeline.run("precompute", config, wd.root, data_dir=data_dir)
  assert bart_stages.precompute_done(config, wd, data_dir)
  assert LatentStore(wd.latents_dir("validation")).manifest["autoencoder"].endswith(
      "+compression:" + compression_codec.weights_digest(weights))
