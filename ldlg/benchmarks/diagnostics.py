r"""Where a trained LD4LG run loses quality: the decoder's robustness to latent noise, and the denoiser's accuracy
by noise level.

  python -m ldlg.benchmarks.diagnostics --workdir=runs/sst_cpu [--num_examples=128] [--out=<dir>]
      [--parts=...,sampling_from_noise_level --judge=<causal LM folder>]

Reads the run's saved config (`<workdir>/config.json`), its validation latents (precompute stage), its frozen
BART and its latest checkpoint (EMA parameters), and writes `<out>/diagnostics.json` (default out = the
workdir) plus, with matplotlib installed (`pip install .[plots]`), `decoder_robustness.png` and
`denoiser_by_noise.png`:

- decoder_robustness: validation latents x (normalized units, as the denoiser sees them) plus σ·ε for each σ in
  `noise_scales`, un-normalized and decoded with the run's decoding settings; exact match, word accuracy and
  BLEU against the sentences themselves. σ = 0 is the codec's own ceiling; the σ where exact match collapses
  says how close a sample must land to a real latent to decode to a real sentence.
- denoiser_by_noise: for each t of an even grid over [0, T), z_t = sqrt(ᾱ_t) x + sqrt(1-ᾱ_t) ε, one network
  call gives x̂0 (with self-conditioning: a first call without an estimate, then one with it, as the sampler's
  second step); per t: x̂0 mean squared error over valid positions and channels (first pass and
  self-conditioned), its ratio to the error of predicting 0 (the data mean), and the share of x̂0 that decode
  to exactly the sentence. Class-conditional runs use each example's true label.
- class_sensitivity (class-conditional runs): at each t of the grid, one x̂0 call with the true label, one with
  another class (label + 1 mod C) and one with the null class, on the same z_t; per t: the three x̂0 errors and
  how far the wrong class moves x̂0 (relative squared change). If the wrong class moves nothing, the samples cannot
  follow their class, and no guidance scale can make them (guidance amplifies the conditional-minus-null
  difference).
- sampling_from_noise_level: for start points k of the run's sampling grid (DDIM/DDPM), validation latents noised
  to the grid's t_k, then the run's own sampler (steps, η, guidance with each example's true label,
  self-conditioning) from step k to the end. Per start: the final latents' error against the originals and their
  norm relative to the originals', exact match and BLEU of their decodings against the sentences, and, with a
  judge (`--judge`, a causal LM folder such as the recipe's `<dataset>/judge`), the decodings' perplexity. k = 0
  is an ordinary sample (z_T keeps almost nothing of x0), the last k one step from nearly clean latents: the t at
  which fluency (judge perplexity) breaks away from the real sentences' says which part of the trajectory loses
  the quality, and comparing runs (e.g. budgets) says whether training moves that part.
- sample_reencoding: does a sample decode to broken text because it lands where the decoder fails, or because it
  is the latent of broken text? Ordinary samples (the run's sampler from pure noise, with the validation
  sentences' lengths and labels) are decoded, the decodings encoded again, and the distance between the sample
  and that re-encoding (squared error per valid channel, normalized units; over the samples whose decoding
  re-encodes to the same length) is set beside the same round trip of the validation latents themselves. The
  decoder-robustness curve reads it: noise of std σ puts a latent σ² away. A sample about as close to its
  re-encoding as a real latent is a faithful code of its text, and a more robust decoder cannot help it; one much
  further away is off the encoder's manifold, where training the decoder on noised latents (the later version's
  remedy) could.
"""
import functools
import json
import pathlib
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ldlg.benchmarks import plots
from ldlg.codecs.bart import codec as bart_codec
from ldlg.codecs.bart import reconstruction
from ldlg.engine.workdir import Workdir
from ldlg.methods.gaussian import schedules

NOISE_SCALES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
PARTS = ("decoder_robustness", "denoiser_by_noise", "class_sensitivity", "sampling_from_noise_level",
         "sample_reencoding")
# Parts run when --parts is not given: the sampling parts are slower (sampler runs, and a judge for perplexity).
DEFAULT_PARTS = PARTS[:3]


def load_run_config(workdir: Workdir) -> ml_collections.ConfigDict:
  """The config the run was made with (`<workdir>/config.json`)."""
  if not workdir.config_file.exists():
    raise FileNotFoundError(f"no {workdir.config_file}: {workdir.root} is not a run's workdir (run the pipeline "
                            "there first)")
  return ml_collections.ConfigDict(json.loads(workdir.config_file.read_text()))


def _texts(store, indices) -> list[str]:
  return [store.strings(int(i))["text"] for i in indices]


def decoder_robustness(codec, batch: dict, texts: Sequence[str], mean: np.ndarray, std: float,
                       noise_scales: Sequence[float], seed: int = 0) -> list[dict[str, float]]:
  """Scores of decoding (x + σ ε) for each σ (normalized units); see the module docstring.

  Args:
    codec: a `BartLatentCodec` (decode takes un-normalized latents).
    batch: {"latents" [n, L, d] normalized, "mask" [n, L]}.
    texts: the n sentences.
    mean, std: the normalization statistics.
    noise_scales: the σ values.
    seed: noise seed (the same ε for every σ, so the curve is smooth in σ).

  Returns:
    One {"noise_std", "exact_match", "word_accuracy", "bleu", "num_sentences"} per σ.
  """
  mask = batch["mask"]
  eps = np.random.default_rng(seed).standard_normal(batch["latents"].shape).astype(np.float32)
  rows = []
  for sigma in noise_scales:
    noisy = np.where(mask[..., None], batch["latents"] + sigma * eps, 0.0)
    hyps = codec.decode(noisy * std + mean, mask)
    rows.append({"noise_std": float(sigma), **reconstruction.reconstruction_scores(hyps, list(texts))})
  return rows


def _masked_mse(a, x0, mask) -> float:
  """Squared error of a [n, L, d] against x0 per valid channel (mask [n, L])."""
  count = jnp.maximum(mask.sum(), 1) * x0.shape[-1]
  return float(jnp.sum(jnp.where(mask[..., None], jnp.square(a - x0), 0.0)) / count)


def _noised_x0_estimator(method, params, x0, mask, t, rng):
  """z_t of x0 [n, L, d] at step t (padding zeroed) and x̂0(self_cond, has_self_cond, class_id) on it: the one
  denoiser call the diagnostics make, in x0 units whatever the run's objective."""
  from ldlg.methods.gaussian import parameterization as param_lib
  valid = mask[..., None]
  ts = jnp.full((x0.shape[0],), t, jnp.int32)
  z_t = jnp.where(valid, schedules.q_sample(method.schedule, x0, ts, jax.random.normal(rng, x0.shape)), 0.0)
  ab = method.schedule.alphas_cumprod[ts]
  objective = method.config.diffusion.get("objective", "x0")

  def x0_hat(self_cond, has_self_cond, class_id):
    out = method.denoise_fn(params, z_t, ts, mask, self_cond, has_self_cond, class_id, False, rng)
    return jnp.where(valid, param_lib.x0_from_output(objective, z_t, out, ab), 0.0)
  return x0_hat


def denoiser_by_noise(method, params, codec, batch: dict, texts: Sequence[str], mean: np.ndarray, std: float,
                      timesteps: Sequence[int], seed: int = 0) -> list[dict[str, float]]:
  """Per-t accuracy of one-step x̂0 on validation latents; see the module docstring.

  Args:
    method: the run's `GaussianDiffusion`.
    params: its (EMA) parameters.
    codec: the `BartLatentCodec`.
    batch: {"latents" [n, L, d] normalized, "mask" [n, L], "label" [n] (class-conditional)}.
    texts: the n sentences.
    mean, std: the normalization statistics.
    timesteps: the t values.
    seed: noise seed.

  Returns:
    One {"t", "alpha_bar", "x0_mse", "x0_mse_self_cond", "relative_mse", "exact_match", "bleu"} per t
    (exact match and BLEU of the self-conditioned x̂0's decoding).
  """
  x0 = jnp.asarray(batch["latents"])
  mask = jnp.asarray(batch["mask"])
  n = x0.shape[0]
  class_id = jnp.asarray(batch["label"], jnp.int32) if method.num_classes > 0 and "label" in batch else None
  mse = lambda a: _masked_mse(a, x0, mask)

  @jax.jit
  def estimates(params, t, rng):
    x0_hat = _noised_x0_estimator(method, params, x0, mask, t, rng)
    first = x0_hat(None, None, class_id)
    return first, x0_hat(first, jnp.ones((n,), bool), class_id)

  baseline = mse(jnp.zeros_like(x0))
  rows = []
  for t in timesteps:
    first, second = estimates(params, int(t), jax.random.fold_in(jax.random.PRNGKey(seed), int(t)))
    hyps = codec.decode(np.asarray(second) * std + mean, np.asarray(mask))
    scores = reconstruction.reconstruction_scores(hyps, list(texts))
    rows.append({"t": int(t), "alpha_bar": float(method.schedule.alphas_cumprod[int(t)]), "x0_mse": mse(first),
                 "x0_mse_self_cond": mse(second), "relative_mse": mse(second) / max(baseline, 1e-12),
                 "exact_match": scores["exact_match"], "bleu": scores["bleu"]})
  return rows


def class_sensitivity(method, params, batch: dict, timesteps: Sequence[int], seed: int = 0) -> list[dict[str, float]]:
  """Per t, how much the class input changes the denoiser's x̂0 (first pass, no self-conditioning estimate).

  Args:
    method: a class-conditional `GaussianDiffusion` (num_classes C > 0).
    params: its parameters.
    batch: {"latents" [n, L, d] normalized, "mask" [n, L], "label" [n] in [0, C)}.
    timesteps: the t values.
    seed: noise seed (the same z_t for the three calls).

  Returns:
    One {"t", "x0_mse_true", "x0_mse_wrong", "x0_mse_null", "relative_change_wrong", "relative_change_null"} per t;
    relative_change_* = |x̂0(other) - x̂0(true)|^2 / |x̂0(true)|^2 over valid positions.
  """
  num_classes = method.num_classes
  if num_classes <= 0 or "label" not in batch:
    raise ValueError("class_sensitivity needs a class-conditional run (config.model.num_classes > 0) and labelled "
                     "latents; leave it out of --parts for this run")
  x0, mask = jnp.asarray(batch["latents"]), jnp.asarray(batch["mask"])
  label = jnp.asarray(batch["label"], jnp.int32)
  valid = mask[..., None]
  total = lambda a: jnp.sum(jnp.where(valid, jnp.square(a), 0.0))

  @jax.jit
  def estimates(params, t, rng):
    x0_hat = functools.partial(_noised_x0_estimator(method, params, x0, mask, t, rng), None, None)
    true, wrong, null = x0_hat(label), x0_hat((label + 1) % num_classes), x0_hat(jnp.full_like(label, num_classes))
    count = jnp.maximum(mask.sum(), 1) * x0.shape[-1]
    norm = jnp.maximum(total(true), 1e-12)
    return (total(true - x0) / count, total(wrong - x0) / count, total(null - x0) / count,
            total(wrong - true) / norm, total(null - true) / norm)

  rows = []
  for t in timesteps:
    vals = estimates(params, int(t), jax.random.fold_in(jax.random.PRNGKey(seed), int(t)))
    rows.append(dict(zip(("x0_mse_true", "x0_mse_wrong", "x0_mse_null", "relative_change_wrong",
                          "relative_change_null"), (float(v) for v in vals)), t=int(t)))
  return rows


def _judge_perplexity(judge, texts: Sequence[str]) -> dict[str, float]:
  """Mean and median per-text perplexity under `judge` over the non-empty texts (as `evaluate_texts` skips them)."""
  from ldlg.evaluation import perplexity  # pylint: disable=import-outside-toplevel
  scored = [t for t in texts if t.strip()]
  if not scored:
    return {"judge_perplexity": float("nan"), "judge_perplexity_median": float("nan")}
  ppl = perplexity.perplexities(scored, judge)
  return {"judge_perplexity": float(np.mean(ppl)), "judge_perplexity_median": float(np.median(ppl))}


def sampling_from_noise_level(method, params, codec, batch: dict, texts: Sequence[str], mean: np.ndarray,
                              std: float, start_steps: Sequence[int], *, sample_config: ml_collections.ConfigDict,
                              seed: int = 0, judge=None, num_shown: int = 3) -> list[dict[str, Any]]:
  """The run's sampler started mid-grid from noised validation latents; see the module docstring.

  Args:
    method: the run's `GaussianDiffusion`.
    params: its (EMA) parameters.
    codec: the `BartLatentCodec`.
    batch: {"latents" [n, L, d] normalized, "mask" [n, L], "label" [n] (class-conditional)}.
    texts: the n sentences.
    mean, std: the normalization statistics.
    start_steps: step indices k in [0, S) of the sampling grid (S = sample_config.num_steps; DDPM: T).
    sample_config: the run's `config.sample` (sampler "ddim" or "ddpm").
    seed: noise seed (start point k uses fold_in(seed, k)).
    judge: a `perplexity.CausalLM`, or None (no perplexity).
    num_shown: decodings kept per start point (the first ones), to read.

  Returns:
    One {"start_step", "t", "alpha_bar", "latent_mse", "norm_ratio", "exact_match", "bleu", "examples"
    [+ "judge_perplexity", "judge_perplexity_median"]} per k, in the order given; latent_mse is the squared error
    per valid channel against the original latents, norm_ratio the mean token norm over the originals'.
  """
  from ldlg.methods.gaussian import samplers  # pylint: disable=import-outside-toplevel
  kind = sample_config.sampler
  if kind not in samplers.SAMPLERS:
    raise ValueError(f"sampling_from_noise_level starts the sampler mid-grid, which the DDIM/DDPM samplers can; "
                     f"this run samples with {kind!r}: pass a config with sample.sampler='ddim'")
  T = method.schedule.num_timesteps
  num_steps = samplers.grid_size(T, sample_config)
  grid = samplers.sampling_timesteps(T, num_steps)
  bad = [int(k) for k in start_steps if not 0 <= int(k) < num_steps]
  if bad:
    raise ValueError(f"start steps must lie in [0, {num_steps}) (the sampling grid), got {bad}")
  sample = method.make_sampler(sample_config)
  x0, mask = jnp.asarray(batch["latents"]), jnp.asarray(batch["mask"])
  valid = mask[..., None]
  n = x0.shape[0]
  cond = jnp.asarray(batch["label"], jnp.int32) if method.num_classes > 0 and "label" in batch else None
  token_norm = lambda a: float(jnp.sum(jnp.where(mask, jnp.linalg.norm(a, axis=-1), 0.0)) / jnp.maximum(mask.sum(), 1))
  rows = []
  for k in start_steps:
    k, t = int(k), int(grid[int(k)])
    k_noise, k_sample = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), k))
    z = schedules.q_sample(method.schedule, x0, jnp.full((n,), t, jnp.int32), jax.random.normal(k_noise, x0.shape))
    out = sample(params, k_sample, mask, cond, z_start=jnp.where(valid, z, 0.0), start_step=k)
    hyps = codec.decode(np.asarray(out) * std + mean, np.asarray(mask))
    scores = reconstruction.reconstruction_scores(hyps, list(texts))
    row = {"start_step": k, "t": t, "alpha_bar": float(method.schedule.alphas_cumprod[t]),
           "latent_mse": _masked_mse(out, x0, mask),
           "norm_ratio": token_norm(out) / max(token_norm(x0), 1e-12),
           "exact_match": scores["exact_match"], "bleu": scores["bleu"], "examples": hyps[:num_shown]}
    if judge is not None:
      row.update(_judge_perplexity(judge, hyps))
    rows.append(row)
  return rows


def _reencoding_distance(codec, latents, mask, mean, std) -> tuple[list[str], dict[str, float]]:
  """Decodes normalized latents [n, L, d] (mask [n, L]), re-encodes the texts and measures how far each latent lies
  from its re-encoding; returns the texts and {"share_same_length", "reencoding_mse", "reencoding_mse_median",
  "token_norm"} (the MSEs over the same-length ones; NaN if none)."""
  latents, mask = np.asarray(latents, np.float32), np.asarray(mask, bool)
  texts = codec.decode(latents * std + mean, mask)
  again, again_mask = codec.encode(texts)
  again = (np.asarray(again, np.float32) - mean) / std
  lengths, again_lengths = mask.sum(1), np.asarray(again_mask, bool).sum(1)
  errors = []
  for i in np.flatnonzero(lengths == again_lengths):
    n = int(lengths[i])
    errors.append(float(np.mean(np.square(latents[i, :n] - again[i, :n]))))
  norms = np.linalg.norm(latents, axis=-1)[mask]
  return texts, {"share_same_length": float(np.mean(lengths == again_lengths)),
                 "reencoding_mse": float(np.mean(errors)) if errors else float("nan"),
                 "reencoding_mse_median": float(np.median(errors)) if errors else float("nan"),
                 "token_norm": float(np.mean(norms))}


def sample_reencoding(method, params, codec, batch: dict, mean: np.ndarray, std: float, *,
                      sample_config: ml_collections.ConfigDict, seed: int = 0, judge=None,
                      num_shown: int = 3) -> dict[str, Any]:
  """How far samples and validation latents lie from the re-encodings of their decodings; see the module docstring.

  Args:
    method, params: the run's `GaussianDiffusion` and its (EMA) parameters.
    codec: the `BartLatentCodec`.
    batch: {"latents" [n, L, d] normalized, "mask" [n, L], "label" [n] (class-conditional)}: the validation
      latents, whose masks (lengths) and labels the n samples take.
    mean, std: the normalization statistics.
    sample_config: the run's `config.sample`.
    seed: sampling seed.
    judge: a `perplexity.CausalLM` scoring both sets' decodings, or None.
    num_shown: sample decodings kept, to read.

  Returns:
    {"validation": {...}, "samples": {...}}, each `_reencoding_distance`'s scores (+ "judge_perplexity",
    "judge_perplexity_median" with a judge); "samples" also holds "examples".
  """
  x0, mask = jnp.asarray(batch["latents"]), jnp.asarray(batch["mask"])
  cond = jnp.asarray(batch["label"], jnp.int32) if method.num_classes > 0 and "label" in batch else None
  out = method.make_sampler(sample_config)(params, jax.random.PRNGKey(seed), mask, cond)
  result = {}
  for name, latents in (("validation", x0), ("samples", out)):
    texts, scores = _reencoding_distance(codec, latents, mask, mean, std)
    if judge is not None:
      scores.update(_judge_perplexity(judge, texts))
    if name == "samples":
      scores["examples"] = texts[:num_shown]
    result[name] = scores
  return result


def _plot(result: dict, out_dir: pathlib.Path) -> list[str]:
  """PNG plots of the diagnostics that ran; [] when matplotlib is not installed."""
  plt = plots.pyplot()
  if plt is None:
    return []
  written = []
  if "decoder_robustness" in result:
    rob = result["decoder_robustness"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sig = [r["noise_std"] for r in rob]
    ax.plot(sig, [r["exact_match"] for r in rob], "o-", label="exact match")
    ax.plot(sig, [r["bleu"] / 100 for r in rob], "s-", label="BLEU / 100")
    ax.set(xlabel="noise std σ (normalized latent units)", ylabel="score", title="Decoder robustness",
           ylim=(0, 1.05))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "decoder_robustness.png", dpi=120)
    plt.close(fig)
    written.append("decoder_robustness.png")
  if "denoiser_by_noise" in result:
    den = result["denoiser_by_noise"]
    fig, ax1 = plt.subplots(figsize=(5, 3.5))
    ts = [r["t"] for r in den]
    ax1.plot(ts, [r["x0_mse"] for r in den], "o-", label="x̂0 MSE (no estimate)")
    ax1.plot(ts, [r["x0_mse_self_cond"] for r in den], "s-", label="x̂0 MSE (self-conditioned)")
    ax1.set(xlabel="timestep t", ylabel="MSE (normalized units)", title="Denoiser accuracy by noise level")
    ax2 = ax1.twinx()
    ax2.plot(ts, [r["exact_match"] for r in den], "^--", color="tab:green", label="decodes exactly")
    ax2.set(ylabel="share decoding exactly", ylim=(0, 1.05))
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(lines, [l.get_label() for l in lines], fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "denoiser_by_noise.png", dpi=120)
    plt.close(fig)
    written.append("denoiser_by_noise.png")
  if "sampling_from_noise_level" in result:
    rows = sorted(result["sampling_from_noise_level"], key=lambda r: r["t"])
    fig, ax1 = plt.subplots(figsize=(5, 3.5))
    ts = [r["t"] for r in rows]
    ax1.plot(ts, [r["exact_match"] for r in rows], "^-", color="tab:green", label="decodes to its sentence")
    ax1.plot(ts, [r["bleu"] / 100 for r in rows], "s-", color="tab:blue", label="BLEU / 100")
    ax1.set(xlabel="start timestep t (sampler run from there)", ylabel="score", ylim=(0, 1.05),
            title="Sampling from noised validation latents")
    handles = ax1.get_legend_handles_labels()[0]
    if "judge_perplexity_median" in rows[0]:
      ax2 = ax1.twinx()
      ax2.plot(ts, [r["judge_perplexity_median"] for r in rows], "o--", color="tab:red", label="judge ppl (median)")
      if result.get("reference_judge_perplexity_median"):
        ax2.axhline(result["reference_judge_perplexity_median"], color="tab:red", lw=0.8, ls=":",
                    label="judge ppl of the sentences")
      ax2.set(ylabel="judge perplexity", yscale="log")
      handles += ax2.get_legend_handles_labels()[0]
    ax1.legend(handles, [h.get_label() for h in handles], fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "sampling_from_noise_level.png", dpi=120)
    plt.close(fig)
    written.append("sampling_from_noise_level.png")
  return written


def run_diagnostics(workdir: str | pathlib.Path, *, num_examples: int = 128, num_timesteps: int = 10,
                    noise_scales: Sequence[float] = NOISE_SCALES, out_dir: str | pathlib.Path | None = None,
                    seed: int = 0, config: ml_collections.ConfigDict | None = None,
                    parts: Sequence[str] = DEFAULT_PARTS, num_start_points: int = 6,
                    start_steps: Sequence[int] = (), judge: str | None = None,
                    sample_overrides: str = "") -> dict[str, Any]:
  """The diagnostics on a trained run; writes diagnostics.json (and PNGs) to out_dir (default the workdir).

  Args:
    workdir: the run's workdir (precompute and train stages done).
    num_examples: validation sentences used (the first ones of the eval split).
    num_timesteps: points of the t grid (evenly spaced over [0, T), both ends included).
    noise_scales: σ values of the robustness curve.
    out_dir: where to write.
    seed: noise seed.
    config: the run's config (default: the one saved in the workdir).
    parts: which diagnostics (`PARTS`); the decoder's alone needs no denoiser that reads these latents only
      (e.g. a sequence-to-sequence run, whose denoiser also wants a source).
    num_start_points: start points of sampling_from_noise_level, evenly spaced step indices of the sampling
      grid, both ends included.
    start_steps: the start points as step indices of the sampling grid instead (non-empty overrides
      num_start_points).
    sample_overrides: "sample.eta=0.0,sample.guidance_scale=1.0"-style changes to the run's `config.sample` (only
      `sample.*`: the checkpoint fixes the rest), e.g. to test another sampler setting on the same model.
    judge: a causal LM folder (or hub name) whose perplexity scores sampling_from_noise_level's decodings and the
      sentences themselves; None = no perplexity.

  Returns:
    {"workdir", "checkpoint_step", "num_examples", "decoder_robustness": [...], "denoiser_by_noise": [...],
     "plots": [...]}.
  """
  from ldlg.methods.gaussian.text_sampler import TextSampler, read_sampling_meta
  unknown = sorted(set(parts) - set(PARTS))
  if unknown or not parts:
    raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {list(parts)}")
  wd = Workdir(pathlib.Path(workdir).absolute())
  config = config or load_run_config(wd)
  if sample_overrides:
    from ldlg.benchmarks import ab  # pylint: disable=import-outside-toplevel
    fields = [item.partition("=")[0].strip() for item in sample_overrides.split(",") if item.strip()]
    outside = [f for f in fields if not f.startswith("sample.")]
    if outside:
      raise ValueError(f"sample_overrides may change sample.* only (the checkpoint fixes the rest), got {outside}")
    config = ab.apply_overrides(config, sample_overrides)
  meta = read_sampling_meta(wd)
  sampler = TextSampler.from_meta(config, wd, meta)
  params = sampler.load_params()
  store = bart_codec.open_latent_store(config, wd, config.data.eval_split)
  indices = np.arange(min(num_examples, store.num_examples))
  batch = store.gather(indices, pad_to=config.model.max_len)
  batch["latents"] = np.where(batch["mask"][..., None], batch["latents"], 0.0)
  texts = _texts(store, indices)
  mean, std = sampler.mean, sampler.std  # The checkpoint's statistics: what sampling un-normalizes with.
  T = sampler.method.schedule.num_timesteps
  grid = np.unique(np.round(np.linspace(0, T - 1, num_timesteps)).astype(int))
  result = {
      "workdir": str(wd.root), "num_examples": int(len(indices)),
      "checkpoint_step": int(meta.get("data_position", -1)), "codec": sampler.codec.identity(),
      "sample": config.sample.to_dict(),
  }
  if "decoder_robustness" in parts:
    result["decoder_robustness"] = decoder_robustness(sampler.codec, batch, texts, mean, std, noise_scales, seed)
  if "denoiser_by_noise" in parts:
    result["denoiser_by_noise"] = denoiser_by_noise(sampler.method, params, sampler.codec, batch, texts, mean, std,
                                                    grid, seed)
  if "class_sensitivity" in parts and config.model.num_classes > 0:
    result["class_sensitivity"] = class_sensitivity(sampler.method, params, batch, grid, seed)
  lm = None
  if judge and {"sampling_from_noise_level", "sample_reencoding"} & set(parts):
    from ldlg.evaluation import perplexity  # pylint: disable=import-outside-toplevel
    lm = perplexity.load_causal_lm(judge)
    ref = _judge_perplexity(lm, texts)
    result.update(judge=judge, reference_judge_perplexity=ref["judge_perplexity"],
                  reference_judge_perplexity_median=ref["judge_perplexity_median"])
  if "sampling_from_noise_level" in parts:
    from ldlg.methods.gaussian import samplers  # pylint: disable=import-outside-toplevel
    num_steps = samplers.grid_size(T, config.sample)
    starts = (np.asarray(start_steps, int) if len(start_steps) else
              np.unique(np.round(np.linspace(0, num_steps - 1, num_start_points)).astype(int)))
    result["sampling_from_noise_level"] = sampling_from_noise_level(
        sampler.method, params, sampler.codec, batch, texts, mean, std, starts, sample_config=config.sample,
        seed=seed, judge=lm)
  if "sample_reencoding" in parts:
    result["sample_reencoding"] = sample_reencoding(sampler.method, params, sampler.codec, batch, mean, std,
                                                    sample_config=config.sample, seed=seed, judge=lm)
  out = pathlib.Path(out_dir) if out_dir else wd.root
  out.mkdir(parents=True, exist_ok=True)
  result["plots"] = _plot(result, out)
  (out / "diagnostics.json").write_text(json.dumps(result, indent=2))
  return result


FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program: importing this module (tests, Colab, ldlg.benchmarks.quality, which
  # has its own --workdir) then never collides on flag names.
  flags.DEFINE_string("workdir", None, "A trained run's workdir.")
  flags.DEFINE_integer("num_examples", 128, "Validation sentences to use.")
  flags.DEFINE_integer("num_timesteps", 10, "Points of the timestep grid.")
  flags.DEFINE_string("out", None, "Output folder (default: the workdir).")
  flags.DEFINE_integer("seed", 0, "Noise seed.")
  flags.DEFINE_list("parts", list(DEFAULT_PARTS), f"Which diagnostics, from {PARTS}.")
  flags.DEFINE_integer("num_start_points", 6, "Start points of sampling_from_noise_level on the sampling grid.")
  flags.DEFINE_list("start_steps", [], "Start points of sampling_from_noise_level as step indices of the sampling "
                    "grid (instead of --num_start_points).")
  flags.DEFINE_string("sample_overrides", "", "Changes to the run's sample.* settings, e.g. "
                      "'sample.eta=0.0,sample.guidance_scale=1.0'.")
  flags.DEFINE_string("judge", None, "Causal LM folder scoring the sampling parts' decodings by perplexity "
                      "(e.g. <recipe workdir>/<dataset>/judge); default none.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  result = run_diagnostics(FLAGS.workdir, num_examples=FLAGS.num_examples, num_timesteps=FLAGS.num_timesteps,
                           out_dir=FLAGS.out, seed=FLAGS.seed, parts=FLAGS.parts,
                           num_start_points=FLAGS.num_start_points, start_steps=[int(k) for k in FLAGS.start_steps],
                           judge=FLAGS.judge, sample_overrides=FLAGS.sample_overrides)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
