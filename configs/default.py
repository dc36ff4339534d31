r"""Paper defaults for LD4LG (Lovelace et al., NeurIPS 2023, first version) on `facebook/bart-base`.

The per-dataset files (`e2e.py`, `rocstories.py`, `sst.py`, `ag_news.py`) start from this and set the data section;
run as is, it is the paper's E2E setting, the same as `configs/e2e.py`:
  python -m ldlg.main --config=configs/default.py --workdir=runs/e2e --mode=pipeline --data_dir=../shared/data
  Hardware: an accelerator (launch/gpu.sh, launch/tpu_pod.sh); time and results: see configs/e2e.py.

Every field is documented where it is used:

  data         which dataset, splits, and how latents are stored     (ldlg/data)
  autoencoder  frozen BART: hub name or local dir, or pretrain our own (ldlg/autoencoder)
  model        Denoiser(**config.model)                                 (ldlg/models/denoiser.py)
  diffusion    schedule, objective, loss, self-conditioning, labels     (ldlg/diffusion)
  optim        AdamW + warmup/cosine + clipping                         (ldlg/train.py)
  train        steps, batch, EMA, logging, checkpoints                  (ldlg/train.py)
  sample       sampler, steps, guidance, decoding                       (ldlg/sample.py)
"""

import ml_collections


def d(**kwargs) -> ml_collections.ConfigDict:
  """A nested config that reads like a literal (as in google-research/vdm)."""
  return ml_collections.ConfigDict(kwargs)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = d(
      name="e2e",              # One of ldlg.data.DATASETS.
      train_split="train",
      eval_split="validation",  # Reference text for evaluation; never the withheld test split.
      max_length=64,           # Tokens, BOS/EOS included; longer text is truncated and counted.
      latent_dtype="float16",  # Storage dtype of precomputed latents: float16 or bfloat16.
      shard_size=8192,         # Sentences per latent shard on disk.
      encode_batch_size=128,   # Sentences per encoder call during precompute.
      max_examples=0,          # Cap on examples per split (0 = all); for quick runs.
      length_bucketed=False,   # Pad each batch to its longest example (faster on CPU; the paper pads to max_length).
      group_by_length=0,       # k > 0: batches of similar length, from length-sorted groups of k batches.
  )

  config.autoencoder = d(
      name="facebook/bart-base",  # Hub name or local directory; ignored when pretrain=True.
      pretrain=False,             # True: train our own tokenizer + small BART on the corpus (offline path).
      dtype="float32",            # Compute dtype of the frozen BART (bfloat16 on accelerators).
      # Decoding (the paper's, Sec. 4): 4 beams, repetition penalty 1.2, no repeated trigrams, max 64 tokens.
      num_beams=4,
      repetition_penalty=1.2,
      no_repeat_ngram_size=3,
      length_penalty=1.0,
      min_decode_length=5,        # As the reference decoding (tokens, decoder start included).
      # Everything below is used only when pretrain=True (ldlg/autoencoder/pretrain.py): a byte-level BPE
      # tokenizer and a BART denoising autoencoder (text infilling), some examples left clean so the decoder
      # learns to reconstruct from the encoder's latents.
      vocab_size=8192,
      tokenizer_min_frequency=2,
      max_length=64,
      d_model=256,
      encoder_layers=3,
      decoder_layers=3,
      attention_heads=4,
      ffn_dim=1024,
      dropout=0.1,
      attention_dropout=0.0,
      max_position_embeddings=128,
      clean_fraction=0.5,
      mask_ratio=0.3,
      poisson_lambda=3.0,
      random_ratio=0.1,
      token_mask_ratio=0.0,
      batch_size=64,
      num_steps=20000,
      learning_rate=1e-3,
      warmup_steps=500,
      weight_decay=0.01,
      grad_clip_norm=1.0,
      seed=0,
      pad_multiple=16,
      group_by_length=0,          # k > 0: batches of similar length, from length-sorted groups of k batches.
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=2,
      eval_num_sentences=500,
      eval_num_beams=4,
      eval_batch_size=64,
  )
  # The autoencoder truncates text at the same length the latents are stored at: one source of truth.
  config.autoencoder.max_length = config.data.get_ref("max_length")
  # Decoding counts the decoder start token, so a max_length-token sentence needs one more step.
  config.autoencoder.max_decode_length = config.data.get_ref("max_length") + 1
  # The BART decoder fine-tuned on noised latents with the encoder frozen (ldlg/codecs/bart/decoder_finetune.py):
  # off (noise_std = 0) by default; with noise_std > 0 the finetune_decoder stage runs after precompute and sampling
  # decodes with it. The latents, and a denoiser trained on them, are unchanged.
  from ldlg.codecs.bart import decoder_finetune  # pylint: disable=import-outside-toplevel
  config.decoder_finetune = decoder_finetune.default_config()

  # Denoiser(**config.model): 12 x 768 pre-LN transformer, 12 heads, GeGLU, T5 relative bias.
  config.model = d(
      latent_dim=768,  # Must equal the autoencoder's d_model; checked against the latent manifest.
      dim=768,
      num_layers=12,
      num_heads=12,
      ff_mult=4,
      max_len=64,
      num_classes=0,
      rel_pos_buckets=32,
      rel_pos_max_distance=128,
      dropout=0.0,
      dtype="float32",
  )

  config.diffusion = d(
      schedule="linear",  # linear (DDPM, the paper), cosine, sqrt (DiffuSeq).
      num_timesteps=1000,
      beta_start=1e-4,
      beta_end=0.02,
      objective="x0",       # The network predicts x0 (eps-prediction was unstable for the authors).
      loss_type="l2",       # l2 as the paper describes; l1 as the reference scripts used.
      self_condition_prob=0.5,
      # per_example (one coin per example, estimate pass every step), per_batch (one coin per step, as the
      # reference code; skips the estimate pass when it says no) or skip_if_unused (ldlg/methods/gaussian/losses.py).
      self_condition_mode="per_example",
      label_dropout=0.1,    # Class-conditional only: share of labels replaced by the null class.
  )
  # The denoiser scales t by T for its time embedding: one source of truth.
  config.model.num_timesteps = config.diffusion.get_ref("num_timesteps")

  config.optim = d(
      lr=1e-4,
      warmup_steps=1000,
      schedule="cosine",  # cosine decay to 0 after warmup, or constant.
      weight_decay=0.01,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      grad_clip=1.0,
  )

  config.train = d(
      num_steps=100_000,
      batch_size=64,        # Global batch; split over all devices of all hosts.
      ema_decay=0.9999,
      ema_warmup=True,      # decay_t = min(decay, (1 + t) / (10 + t)).
      log_every=100,
      ckpt_every=5000,
      keep_checkpoints=3,
      sample_every=10_000,  # Decode a few samples into the logs (0 = never).
      num_log_samples=4,
      # A log window whose loss exceeds divergence_factor x its running level warns; divergence_patience such
      # windows in a row stop the run (0 = warn only). A non-finite loss or update always stops it.
      divergence_factor=100.0,
      divergence_patience=5,
  )

  config.sample = d(
      sampler="ddim",        # ddim (strided steps, eta) or ddpm (all T steps).
      num_steps=250,
      eta=1.0,
      guidance_scale=1.0,    # Classifier-free guidance weight w (1 = none).
      num_samples=1000,
      batch_size=125,
      seed=0,
      class_id=-1,           # -1: balanced over classes (class-conditional); else that class.
      max_redraws=5,         # Empty decodes are re-drawn up to this many rounds (as the paper does).
      checkpoint_step=-1,    # -1 = latest.
      length_bucket=8,       # LD4LG sampling batches shortest lengths first and runs each batch at the smallest
                             # multiple of this many positions that holds it (0 = every batch at model.max_len).
  )

  config.eval = d(
      featurizer="auto",        # MAUVE features: gpt2-large when its weights load, else all-MiniLM-L6-v2.
      ppl_model="gpt2-large",   # Perplexity judge (hub name or local dir); "" = skip perplexity.
      num_draws=5,              # sample.num_samples is split into this many sets: mean ± std over sets.
      max_reference=5000,       # Reference texts (eval split) used for MAUVE.
      # Likelihood of held-out latents (Gaussian methods): probability-flow ODE NLL (Hutchinson) and the VLB on
      # this many eval-split latents (0 = skip); Hutchinson probes per example; the adaptive ODE solver's
      # relative/absolute tolerances (looser: fewer network calls, a coarser estimate); stratified VLB terms.
      likelihood_examples=64,
      likelihood_probes=1,
      likelihood_rtol=1e-5,
      likelihood_atol=1e-5,
      vlb_terms=50,
  )
  return config


def make_cpu_sized(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns a paper config into the offline CPU variant: our own small BART and a small denoiser.

  Sized for 2 CPU cores (measured there): the autoencoder (1.2M params, ~0.25 s/step at batch 64) and the
  denoiser (2.3M params, ~0.3 s/step at batch 64) each train in roughly a quarter of an hour.
  """
  config.autoencoder.update(
      pretrain=True, name="", vocab_size=4096, d_model=128, encoder_layers=2, decoder_layers=2,
      attention_heads=4, ffn_dim=512, num_steps=3000, batch_size=64, learning_rate=1e-3, warmup_steps=200,
      checkpoint_every=500, eval_num_sentences=500)
  config.data.length_bucketed = True
  # BART pretraining on batches of similar length (groups of 50 batches): on E2E 0.62x the step time of random
  # batches (benchmarks/length_grouping.py) with the same reconstruction (87.2 % exact vs 87.0 %, 500 validation
  # sentences).
  config.autoencoder.group_by_length = 50
  # The denoiser on grouped batches too: 0.55x the step time on E2E. Its samples were within the spread of training
  # seeds with random batches (E2E judge perplexity: grouped 20.0 and 20.3 over seeds 0 and 1, random 16.3 and 20.6;
  # README, "Speed: length-grouped batches").
  config.data.group_by_length = 50
  if config.autoencoder.max_decode_length > config.autoencoder.max_position_embeddings:
    # Long texts (ROCStories: 128 tokens) decode up to max_length + 1 tokens, decoder start included: the small
    # BART's learned positions must cover that.
    config.autoencoder.max_position_embeddings = config.autoencoder.max_decode_length
  # Linked, not copied: `--config.autoencoder.d_model=...` then changes the denoiser's input width too.
  config.model.latent_dim = config.autoencoder.get_ref("d_model")
  config.model.update(dim=128, num_layers=4, num_heads=4)
  config.optim.update(lr=5e-4, warmup_steps=200)
  config.train.update(num_steps=3000, batch_size=64, ema_decay=0.999, log_every=50, ckpt_every=500,
                      sample_every=1000)
  config.sample.update(num_samples=500, batch_size=100)
  # Offline: no gpt2-large. MAUVE on MiniLM features; no perplexity judge unless one is trained.
  # Likelihood tolerance 1e-3, not 1e-5: on the E2E main job's model it moved the ODE NLL by 0.004 of 74.4 nats
  # per dimension (8 examples) for 9x fewer network calls (149 vs 1,313), which lets it finish on a CPU.
  config.eval.update(featurizer="minilm", ppl_model="", likelihood_rtol=1e-3, likelihood_atol=1e-3)
  return config


# Classifier-free guidance weight of the `:cpu` class-conditional default (`with_class_recipe`).
CPU_GUIDANCE_SCALE = 5.0


def with_class_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:cpu` variant's class conditioning (class-conditional datasets only; others are left as they are).

  Chosen by the recipe ablation on SST (issue 13; README, "Recipe ablation on SST"): the class added to the time
  embedding (`model.class_input="time"`, as the official HEAD code) and sampled with classifier-free guidance
  w = CPU_GUIDANCE_SCALE. With the class as a cross-attention memory token (the model's default) the pathway is dead
  after the CPU budget (the class moves x̂0 by a relative 1e-7) and the samples' class accuracy is chance whatever
  the guidance; through the time embedding, and with w = 5, it reached 90 % of the probe's accuracy on real text at
  both training seeds tried, with a better judge perplexity and a lower MAUVE and diversity (guidance is a sampling
  choice: `--config.sample.guidance_scale=1` trades the class back for MAUVE without retraining). Guidance doubles
  the sampler's network calls. Not applied to the official-code variants (`cpu_official_v1` keeps v1's memory
  token, `cpu_later` its own class path without guidance): they reproduce their recipes. `cpu_compressed` is `:cpu`
  on compressed latents and has it too.
  """
  if config.model.num_classes > 0:
    config.model.class_input = "time"
    config.sample.guidance_scale = CPU_GUIDANCE_SCALE
  return config


def make_autoregressive_cpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The offline CPU autoregressive baseline on the same data (the `:ar_cpu` variant of every dataset config).

  A GPT-2 (ldlg/methods/autoregressive) over the project's own byte-level BPE (`tokenizer` stage), trained by the
  same engine, sampled by the same runner and scored by the same evaluate stage as LD4LG. Its size matches the
  `:cpu` denoiser's parameter count (2.3M) within a few percent; `--config.tokenizer.path=<run>/autoencoder`
  reuses an LD4LG run's tokenizer so both are scored on the same tokens.
  """
  config.method = "autoregressive"
  for section in ("autoencoder", "diffusion"):  # LD4LG's own sections mean nothing here.
    del config[section]
  config.tokenizer = d(path="", vocab_size=4096, min_frequency=2)
  config.data.pad_multiple = 16  # Batches are padded to a multiple of this: few compiled shapes.
  config.model = d(n_layer=4, n_embd=192, n_head=4, n_positions=64, dropout=0.1)
  config.model.n_positions = config.data.get_ref("max_length")
  config.optim.update(lr=5e-4, warmup_steps=200, b2=0.98)
  config.train = d(num_steps=3000, max_seconds=0.0, batch_size=64, ema_decay=0.0, ema_warmup=True, log_every=50,
                   ckpt_every=500, keep_checkpoints=2, eval_batch_size=64)
  config.sample = d(num_samples=500, batch_size=100, max_length=64, top_p=1.0, temperature=1.0, max_redraws=5,
                    seed=0, checkpoint_step=-1)
  config.sample.max_length = config.data.get_ref("max_length")
  config.eval.update(featurizer="minilm", ppl_model="")
  return config


def make_masked_cpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Offline CPU masked diffusion (MDLM, ldlg/methods/masked) on the same data: the `:mdlm_cpu` variant.

  A bidirectional transformer over the project's BPE (`tokenizer` stage; `--config.tokenizer.path` to share one
  with an AR or LD4LG run), log-linear schedule, continuous-time RB-NELBO with antithetic times, no time input
  (as the paper), class-conditional with a null class where the dataset has labels. Sized like the `:cpu`
  denoiser (4 x 128).
  """
  num_classes = config.model.num_classes
  config.method = d(name="masked", schedule="loglinear", eps=1e-3, num_timesteps=0, t_min=1e-3, pad_in_loss=True,
                    label_dropout=0.1)
  for section in ("autoencoder", "diffusion"):
    del config[section]
  config.tokenizer = d(path="", vocab_size=4096, min_frequency=2)
  config.model = d(dim=128, num_layers=4, num_heads=4, ff_mult=4, max_len=64, num_classes=num_classes,
                   time_conditioning=False, dropout=0.0)
  config.model.max_len = config.data.get_ref("max_length")
  config.optim.update(lr=5e-4, warmup_steps=200)
  config.train.update(num_steps=3000, batch_size=64, ema_decay=0.999, log_every=50, ckpt_every=500,
                      sample_every=0)
  config.sample = d(num_samples=500, batch_size=100, num_steps=128, cache=True, top_p=1.0, guidance_scale=1.0,
                    seed=0, class_id=-1, max_redraws=5, checkpoint_step=-1)
  config.eval.update(featurizer="minilm", ppl_model="", likelihood_repeats=1)
  return config


def make_diffuseq_cpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Offline CPU DiffuSeq (ldlg/methods/seq2seq) on a seq2seq dataset: the `:diffuseq_cpu` variant (E2E, QQP).

  DiffuSeq's recipe (Gong et al. 2022: sqrt schedule, T = 2000, learned and tied 128-d embedding, rounding loss,
  learned padding, loss-aware importance sampling of t, DDIM-style sampling with step skipping and clamping,
  MBR over candidates) at the `:cpu` denoiser's size (4 x 128, ~2.3M params with the embedding) and budget
  (3,000 steps at batch 64). Sequences are `[<s> source </s> ; target </s> ; <pad> ...]` of 96 tokens, the
  source at most 48: on E2E's BPE that keeps every meaning representation whole and cuts 0.1 % of targets.
  Differences from the paper's setting: 50k steps at batch 2048, a 12-layer BERT-base, seq_len 128, 2000
  sampling steps and |S| = 10 there.
  """
  config.method = "diffuseq"
  for section in ("autoencoder", "diffusion"):
    del config[section]
  config.tokenizer = d(path="", vocab_size=4096, min_frequency=2, include_source=True)
  config.data.max_length = 96
  config.data.max_source_length = 48
  config.diffusion = d(schedule="sqrt", num_timesteps=2000, learn_padding=True, embed_noise=True,
                       importance_sampling=True, importance_history=10, importance_uniform_prob=0.001)
  # segment_embedding: not DiffuSeq's (README, "Memorising 8 pairs"); off as in the paper.
  config.model = d(vocab_size=0, embed_dim=128, dim=128, num_layers=4, num_heads=4, ff_mult=4, max_len=96,
                   dropout=0.1, dtype="float32", embed_init_std=1.0, num_timesteps=2000, segment_embedding=False)
  config.model.max_len = config.data.get_ref("max_length")
  config.model.num_timesteps = config.diffusion.get_ref("num_timesteps")
  config.optim.update(lr=5e-4, warmup_steps=200)
  config.train.update(num_steps=3000, batch_size=64, ema_decay=0.999, log_every=50, ckpt_every=500,
                      sample_every=0)
  # 100 of E2E validation's 547 distinct MRs x 5 candidates; 200 of the 2000 steps (DiffuSeq skips steps too).
  config.sample = d(num_sources=100, num_candidates=5, batch_size=50, num_steps=200, eta=1.0, clamp=True,
                    rounding="logits", seed=0, checkpoint_step=-1)
  config.eval.update(featurizer="minilm", ppl_model="")
  return config


def make_ld4lg_seq2seq(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sequence-to-sequence LD4LG (ldlg/methods/gaussian/seq2seq_method.py) on top of an LD4LG sizing;
  `:ld4lg_seq2seq_cpu` is it on the `:cpu` sizing (seq2seq datasets: E2E).

  The paper's later version: the target's BART latents are diffused as in LD4LG, and the denoiser cross-attends to
  the frozen encoder's states of the source (`model.source_dim` = the latent width), dropped to a learned null
  source with p = 0.1 in training (`diffusion.source_dropout`) so that sampling can use classifier-free guidance
  (w = 2, as the paper); 5 candidates per source, each at a length drawn given its source's length, and MBR,
  scored like DiffuSeq's row. Offline, the project's BART also pretrains on the distinct sources
  (`autoencoder.include_source`), so its frozen encoder has read the meaning-representation format before it
  encodes it. Same budget as the other seq2seq rows (the `:cpu` run's
  3,000 steps at batch 64).
  """
  config.method = "ld4lg_seq2seq"
  config.autoencoder.include_source = True
  config.model.source_dim = config.autoencoder.get_ref("d_model")
  config.diffusion.source_dropout = 0.1
  config.train.sample_every = 0  # The periodic text samples are unconditional draws: not what this run makes.
  # Each candidate's length is drawn given its source's length (ldlg/data/conditional_lengths.py), not from all
  # targets' lengths: on E2E the source length explains half the target length's variance.
  config.sample.update(num_sources=100, num_candidates=5, batch_size=50, guidance_scale=2.0, length_from="source",
                       length_min_count=100)
  return config


def make_bart_seq2seq(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The autoregressive seq2seq baseline (ldlg/methods/bart_seq2seq) on top of an LD4LG sizing; `:ar_seq2seq_cpu`
  is it on the `:cpu` sizing (seq2seq datasets: E2E).

  The run's BART — on `:cpu` the project's small one, pretrained on the corpus exactly as the main job's (the
  `autoencoder` section; or reuse that one with `--config.autoencoder.pretrain=False
  --config.autoencoder.name=runs/e2e_cpu/autoencoder`) — fine-tuned on (meaning representation -> text) with
  teacher forcing for the DiffuSeq row's budget (3,000 steps at batch 64), then decoded with 4 beams and no
  repetition penalty or n-gram blocking (data-to-text repeats words such as "the" and "is" legitimately).
  Sources up to 64 BART tokens.
  """
  config.method = "bart_seq2seq"
  for section in ("diffusion", "model"):
    del config[section]
  config.data.max_source_length = 64
  config.autoencoder.update(num_beams=4, repetition_penalty=1.0, no_repeat_ngram_size=0)
  config.optim.update(lr=3e-4, warmup_steps=200, b2=0.98)
  config.train = d(num_steps=3000, batch_size=64, log_every=50, ckpt_every=500, keep_checkpoints=2)
  config.sample = d(num_sources=100, num_candidates=1, batch_size=50, seed=0, checkpoint_step=-1)
  config.eval.update(featurizer="minilm", ppl_model="")
  return config


def _link_schedule_to_model(config: ml_collections.ConfigDict) -> None:
  """The denoiser reads the schedule for its ᾱ / log-SNR time input: linked, so they cannot disagree."""
  for model_field, diffusion_field in (("noise_schedule", "schedule"), ("beta_start", "beta_start"),
                                       ("beta_end", "beta_end"), ("latent_scale", "latent_scale")):
    config.model[model_field] = config.diffusion.get_ref(diffusion_field)


def make_official_v1(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What the official first-version code (github justinlovelace/latent-diffusion-for-language, v1 scripts)
  does where the paper's text leaves a choice, on top of any sizing (paper or `make_cpu_sized`).

  Sizes, learning rate, batch and steps are left as they are; the recipe's own choices:
  - network: exact (erf) GELU, head width 64, dropout 0.1, x-transformers' initial scales (T5 bias table
    N(0,1)·sqrt(64), position table N(0,1)·dim^-1/2, null self-conditioning vector and class table N(0,1));
  - loss: L1 on x0 (`--loss_type l1 --objective pred_x0`, linear β);
  - self-conditioning: one coin per batch (`random.random() < 0.5`), not per example
    (`diffusion.self_condition_mode = "per_batch"`, ldlg/methods/gaussian/losses.py);
  - AdamW with no weight decay on biases and LayerNorm scales (`optim.decay_mask = "matrices"`), decay 0.01;
  - EMA with ema_pytorch's warm-up `1 - (1 + t)^(-3/4)` (`train.ema_power = 0.75`; ldlg/engine/train_state.py)
    instead of the engine's (1 + t)/(10 + t);
  - DDIM η = 1, 250 steps; decoding at most 64 tokens (max_seq_len 64 there).
  Use: `--config=configs/sst.py:cpu_official_v1` (or `:official_v1` at paper size).
  """
  config.model.update(dropout=0.1, gelu_approximate=False, init_scales="official_v1", head_dim=64)
  if config.model.dim % 64:
    raise ValueError(f"the official_v1 recipe fixes the head width at 64; config.model.dim={config.model.dim} is "
                     "not a multiple of 64")
  config.diffusion.update(schedule="linear", objective="x0", loss_type="l1")
  config.diffusion.self_condition_mode = "per_batch"
  config.optim.update(weight_decay=0.01, b1=0.9, b2=0.999)
  config.optim.decay_mask = "matrices"
  config.train.ema_power = 0.75
  config.sample.update(sampler="ddim", eta=1.0)
  config.autoencoder.max_decode_length = 64
  return config


def make_later_version(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper's later version / the official code at HEAD (`scripts/diffusion/bart_latent_v-pred.sh`), on the
  same frozen BART latents, on top of any sizing.

  - diffusion: cosine schedule, v-prediction, L2, a latent scale factor (`diffusion.latent_scale`, 1 = none as
    HEAD's default; < 1 shifts the log-SNR down by 2 log(1/scale), i.e. more noise);
  - network: conditioned on ᾱ_t (`time_input="alpha_bar"`), the self-conditioning estimate concatenated to
    the input (`self_cond_mode="concat"`), U-Net-like long skips (3 as HEAD's scripts, at most
    num_layers // 2), head width 64, exact GELU, dropout 0.1, the class added to the time embedding
    (`class_input="time"`);
  - EMA 0.9999 (already the default).
  Differences that remain: HEAD's continuous-time cosine schedule (log-SNR clamped to ±15) is the discrete
  Nichol–Dhariwal cosine here, and this variant diffuses the [L, d] BART latents; `:cpu_later_compressed` adds
  the learned compression network (ldlg/codecs/compression) and diffuses its 32 × 64 latents, as HEAD does.
  Use: `--config=configs/sst.py:cpu_later` (or `:later` at paper size).
  """
  config.diffusion.update(schedule="cosine", objective="v", loss_type="l2")
  config.diffusion.latent_scale = 1.0
  _link_schedule_to_model(config)
  heads = max(config.model.dim // 64, 1)
  config.model.update(time_input="alpha_bar", self_cond_mode="concat", unet_skips=True, class_input="time",
                      unet_skip_count=min(3, config.model.num_layers // 2), head_dim=config.model.dim // heads,
                      gelu_approximate=False, dropout=0.1)
  return config


def make_compressed(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """LD4LG on the paper's later-version latents (`ldlg/codecs/compression`): the frozen BART encoder's states go
  through a learned Perceiver resampler to a fixed N × w latent (32 × 64, l2-normalized to sqrt(w)), trained as an
  autoencoder through the frozen BART decoder with noise added to the latents (the `train_compression` stage,
  between pretrain_autoencoder and precompute). The denoiser reads N positions of width w with no padding, so
  sampling draws no length. On a `cpu` sizing the network is 2 layers of width 128, trained 2,000 steps.
  """
  from ldlg.codecs.compression.train import default_compression_config  # pylint: disable=import-outside-toplevel
  config.codec = "bart_compressed"
  config.compression = default_compression_config()
  if config.autoencoder.pretrain:  # The project's own small BART: the cpu sizings.
    config.compression.update(width=128, num_layers=2, num_heads=4, num_steps=2000, checkpoint_every=250)
  # Deleted first: the sizings link both fields to the BART's (d_model, data.max_length), and assigning over a
  # linked field would set the linked value itself (BART would then read 32 tokens).
  for field, source in (("latent_dim", "latent_width"), ("max_len", "num_latents")):
    del config.model[field]
    config.model[field] = config.compression.get_ref(source)
  return config


VARIANTS = {
    "cpu": lambda config: with_class_recipe(make_cpu_sized(config)),
    "ar_cpu": make_autoregressive_cpu,
    "mdlm_cpu": make_masked_cpu,
    "diffuseq_cpu": make_diffuseq_cpu,
    "ar_seq2seq_cpu": lambda config: make_bart_seq2seq(make_cpu_sized(config)),
    "ld4lg_seq2seq_cpu": lambda config: make_ld4lg_seq2seq(make_cpu_sized(config)),
    "official_v1": make_official_v1,
    "cpu_official_v1": lambda config: make_official_v1(make_cpu_sized(config)),
    "later": make_later_version,
    "cpu_later": lambda config: make_later_version(make_cpu_sized(config)),
    "compressed": make_compressed,
    "cpu_compressed": lambda config: make_compressed(with_class_recipe(make_cpu_sized(config))),
    "cpu_later_compressed": lambda config: make_compressed(make_later_version(make_cpu_sized(config))),
}


def apply_variant(config: ml_collections.ConfigDict, arg: str | None, name: str) -> ml_collections.ConfigDict:
  """The dataset configs' variants: none (paper), `cpu` (offline LD4LG), `ar_cpu` (offline GPT-2 baseline),
  `mdlm_cpu` (offline masked diffusion), `diffuseq_cpu` / `ar_seq2seq_cpu` / `ld4lg_seq2seq_cpu` (offline
  DiffuSeq / BART seq2seq baseline / sequence-to-sequence LD4LG; seq2seq datasets only), `official_v1` / `later`
  (the official code's first-version recipe / the paper's later version, paper size), `cpu_official_v1` /
  `cpu_later` (the same on the `cpu` sizing), and `compressed` / `cpu_compressed` / `cpu_later_compressed` (LD4LG,
  or the later version, on the compression network's latents)."""
  if arg in VARIANTS:
    return VARIANTS[arg](config)
  if arg:
    raise ValueError(f"unknown variant {arg!r} for configs/{name}.py; use no variant (paper) or one of "
                     + ", ".join(f"':{v}'" for v in VARIANTS))
  return config
