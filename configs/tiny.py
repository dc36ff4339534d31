r"""Tiny end-to-end config for tests and smoke runs: every stage in seconds on one CPU core.

  python -m ldlg.main --config=configs/tiny.py --workdir=/tmp/ldlg_tiny --mode=pipeline --data_dir=../shared/data
  (`configs/tiny.py:ar`, `:mdlm` and `:diffuseq`: the same for the autoregressive baseline, masked diffusion and
  DiffuSeq.)
  Hardware: any CPU; a few minutes including compilation.
  Reaches: nothing meaningful (a few hundred sentences, tens of steps); it checks the plumbing, not quality.
"""

from configs import default


def get_config(arg: str | None = None):
  """arg: None (LD4LG), "ar" (the autoregressive baseline), "mdlm" (masked diffusion), "diffuseq" (seq2seq on
  E2E's meaning representations), "ar_seq2seq" (the BART seq2seq baseline), "ld4lg_seq2seq" (sequence-to-sequence
  LD4LG) or "compressed" (LD4LG on the compression network's latents), each tiny."""
  config = _ld4lg()
  if arg == "ar":
    default.make_autoregressive_cpu(config)
    config.tokenizer.vocab_size = 512
    config.model.update(n_layer=1, n_embd=32, n_head=2)
  elif arg == "mdlm":
    default.make_masked_cpu(config)
    config.tokenizer.vocab_size = 512
    config.model.update(dim=32, num_layers=2, num_heads=2)
  elif arg == "diffuseq":
    default.make_diffuseq_cpu(config)
    config.tokenizer.vocab_size = 512
    config.data.update(max_length=64, max_source_length=40)
    config.diffusion.num_timesteps = 100
    config.model.update(embed_dim=16, dim=32, num_layers=2, num_heads=2, dropout=0.0)
  elif arg == "ar_seq2seq":
    default.make_bart_seq2seq(config)
    config.data.max_source_length = 48
  elif arg == "ld4lg_seq2seq":
    default.make_ld4lg_seq2seq(config)
  elif arg == "compressed":
    default.make_compressed(config)
    config.compression.update(num_latents=8, latent_width=16, width=32, num_layers=1, num_heads=2, batch_size=8,
                              num_steps=20, warmup_steps=5, lr=1e-3, log_every=5, checkpoint_every=10)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} for configs/tiny.py; use none, 'ar', 'mdlm', 'diffuseq', "
                     "'ar_seq2seq', 'ld4lg_seq2seq' or 'compressed'")
  if arg:
    config.optim.update(lr=1e-3, warmup_steps=5)
    config.train.update(num_steps=20, batch_size=8, log_every=5, ckpt_every=10, keep_checkpoints=2)
    if arg in ("diffuseq", "ld4lg_seq2seq"):  # 4 validation MRs x 3 candidates.
      config.sample.update(num_sources=4, num_candidates=3, batch_size=6, num_steps=10)
      if arg == "ld4lg_seq2seq":
        config.sample.length_min_count = 20  # A few hundred pairs: rows of 100 would all be the marginal.
    elif arg == "ar_seq2seq":  # 4 validation MRs, one beam-search output each.
      config.sample.update(num_sources=4, batch_size=2)
    else:
      config.sample.update(num_samples=8, batch_size=4)
    if arg == "mdlm":
      config.sample.num_steps = 16
  return config


def _ld4lg():
  config = default.get_config()
  config.data.update(name="e2e", train_split="validation", eval_split="validation", max_length=32,
                     max_examples=256, shard_size=128, encode_batch_size=64, length_bucketed=False)
  config.autoencoder.update(
      pretrain=True, name="", vocab_size=512, d_model=32, encoder_layers=1, decoder_layers=1,
      attention_heads=2, ffn_dim=64, dropout=0.0, max_position_embeddings=64, batch_size=32, num_steps=30,
      warmup_steps=5, learning_rate=1e-3, log_every=10, checkpoint_every=20, eval_num_sentences=16,
      eval_num_beams=2, num_beams=2)
  config.model.latent_dim = config.autoencoder.get_ref("d_model")
  config.model.max_len = config.data.get_ref("max_length")
  config.model.update(dim=32, num_layers=2, num_heads=2)
  config.diffusion.num_timesteps = 100
  config.optim.update(lr=1e-3, warmup_steps=5)
  config.train.update(num_steps=20, batch_size=8, log_every=5, ckpt_every=10, sample_every=0,
                      keep_checkpoints=2)
  config.sample.update(num_steps=10, num_samples=8, batch_size=4)
  config.eval.update(featurizer="minilm", ppl_model="", num_draws=2, likelihood_examples=4, vlb_terms=5)
  return config
