"""The autoregressive baseline (GPT-2 over the project's BPE) as a `Method`, and its pipeline stages.

This file is the whole of what it took to put the baseline into the one engine: the loss (train.py), the
sampler (sampler.py) and the stages below; no engine file knows about it. A config with
`config.method = "autoregressive"` (every dataset's `:ar_cpu` variant) runs

  tokenizer  <workdir>/tokenizer/ (the project's byte-level BPE; or config.tokenizer.path)
  train      <workdir>/ar_model/: checkpoints/, metrics.jsonl, the model in Hugging Face format, ar_result.json
             (validation loss and perplexity on the eval split)
  sample     <workdir>/samples.jsonl, through the engine's sample runner (sharded over devices)
  evaluate   <workdir>/metrics.json, the same evaluate stage as LD4LG

Config sections read: data (max_length, pad_multiple), tokenizer, model (GPT-2: n_layer, n_embd, n_head,
n_positions, dropout), optim, train (+ max_seconds, eval_batch_size), sample (+ max_length, top_p, temperature).
"""

import dataclasses
import json
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from ldlg.codecs import tokens
from ldlg.engine import provenance
from ldlg.engine import sample_runner
from ldlg.engine import signals
from ldlg.engine.stage import Stage
from ldlg.engine.workdir import Workdir
from ldlg.methods import base
from ldlg.methods.autoregressive import model as ar_model
from ldlg.methods.autoregressive import sampler as ar_sample
from ldlg.methods.autoregressive import train as ar_train


@base.METHODS.register("autoregressive")
@dataclasses.dataclass
class Autoregressive(base.Method):
  """GPT-2 trained with next-token cross-entropy (token mean over the global batch)."""
  config: ml_collections.ConfigDict
  tokenizer: Any
  name = "autoregressive"
  batch_fields = ("input_ids", "attention_mask")

  def __post_init__(self):
    import transformers
    self.model = transformers.FlaxGPT2LMHeadModel(ar_model.gpt2_config(self.config.model, self.tokenizer),
                                                  _do_init=False)
    self._loss = ar_train.make_loss_fn(self.model)

  def init_params(self, rng):
    return jax.jit(self.model.init_weights, static_argnums=1)(rng, (1, 1))

  def loss_fn(self, params, rng, batch):
    return self._loss(params, rng, batch)

  @staticmethod
  def likelihood_metrics(config, workdir, data_dir) -> dict:
    return likelihood_metrics(config, workdir, data_dir)

  @classmethod
  def token_nll(cls, config, workdir, data_dir, step: int = -1) -> dict:
    return token_nll(config, workdir, data_dir, step)

  @staticmethod
  def checkpoint_steps(config, workdir) -> list[int]:
    return base.Method.checkpoint_steps(config, Workdir(model_dir(workdir)))

  @staticmethod
  def stages():
    from ldlg.evaluation.stage import EVALUATE
    return (tokens.TOKENIZER, Stage("train", train, train_done), Stage("sample", sample, sample_done),
            EVALUATE)


def likelihood_metrics(config, workdir: Workdir, data_dir) -> dict:
  """The exact perplexity on the eval split, on the same tokens as MDLM's bound (<s> not scored, </s> scored)."""
  del data_dir
  import json
  import math
  result = json.loads((model_dir(workdir) / "ar_result.json").read_text())
  if "valid_loss" not in result:
    return {}
  return {"likelihood": {"split": config.data.eval_split, "nll_per_token": result["valid_loss"],
                         "perplexity": math.exp(result["valid_loss"]), "exact": True}}


def token_nll(config, workdir: Workdir, data_dir, step: int = -1) -> dict:
  """The exact NLL per token of the eval split under the checkpoint of `step` (-1: the latest): the number
  `ar_result.json` holds as "valid_loss" for the final step, for any kept checkpoint."""
  import math
  from ldlg.data.splits import load_texts
  from ldlg.engine import checkpoints
  from ldlg.engine import train_state as train_state_lib
  tokenizer = tokens.load_tokenizer(config, workdir)
  method = Autoregressive(config, tokenizer)
  tx = train_state_lib.make_optimizer(config.optim, config.train.num_steps)
  ema = config.train.get("ema_decay") is not None  # As the trainer builds the state (TrainJob.ema_decay).
  target = train_state_lib.TrainState.create(method.init_params(jax.random.PRNGKey(0)), tx, ema=ema).to_dict()
  ckpt = checkpoints.Checkpointer(Workdir(model_dir(workdir)).checkpoint_dir)
  try:
    saved, _ = ckpt.restore(target, None if step < 0 else step)
    step = ckpt.latest_step() if step < 0 else step
  finally:
    ckpt.close()
  params = saved["ema_params"] if saved.get("ema_params") is not None else saved["params"]
  texts = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.eval_split)]
  lm = ar_model.ar_causal_lm(method.model, params, tokenizer, name=f"ar_baseline@{step}")
  nll = ar_train.valid_loss(lm, texts, tokenizer, max_length=config.data.max_length,
                            batch_size=config.train.eval_batch_size)
  return {"nll_per_token": nll, "perplexity": math.exp(nll), "exact": True}


def model_dir(workdir: Workdir):
  return workdir.root / "ar_model"


def train(config: ml_collections.ConfigDict, workdir: Workdir, data_dir) -> dict:
  from ldlg.data.splits import load_texts
  tokenizer = tokens.load_tokenizer(config, workdir)
  texts = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.train_split)]
  valid = [r["text"] for r in load_texts(config, data_dir, workdir, config.data.eval_split)]
  result = ar_train.train_ar_baseline(config, texts, tokenizer, model_dir(workdir), valid_texts=valid)
  if result["stopped_by"] == "signal":
    raise signals.Interrupted(f"training was interrupted at step {result['steps']} (checkpoint saved)")
  return result


def train_done(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  return (model_dir(workdir) / "ar_result.json").exists()


def sample(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> list[dict]:
  """`--mode=sample`: writes `<workdir>/samples.jsonl` through the engine's sample runner."""
  del data_dir
  model, params, tokenizer = ar_train.load_ar_baseline(model_dir(workdir))
  sc = config.sample
  sampler = ar_sample.get_sampler(model, int(sc.max_length), float(sc.top_p), float(sc.temperature))
  eos = sampler.eos_id

  def device_fn(params, rng, inputs, example_offset, global_batch):
    del global_batch
    return sampler._sample_impl(params, rng, inputs["row"].shape[0], example_offset)  # pylint: disable=protected-access

  def make_inputs(rng_np, batch_size, class_ids):
    del rng_np, class_ids
    return {"row": np.zeros((batch_size,), np.int32)}, [{} for _ in range(batch_size)]

  runner = sample_runner.SampleRunner(device_fn, make_inputs,
                                      lambda ids, inputs: tokens.decode_ids(ids, tokenizer, eos))
  origin = provenance.sample_provenance(config, provenance.latest_step(model_dir(workdir) / "checkpoints"))
  partial = workdir.root / "samples.partial.jsonl"
  records = runner.sample(params, num_samples=sc.num_samples, seed=sc.seed, batch_size=sc.batch_size,
                          conditions=sample_runner.resolve_class_ids(0, sc.num_samples, None),
                          max_redraws=sc.max_redraws, progress=True, partial_path=partial,
                          partial_key=json.dumps(origin, sort_keys=True))
  settings = {"sampler": "ancestral" if sc.top_p >= 1 else f"nucleus(top_p={sc.top_p})",
              "temperature": sc.temperature, **origin}
  sample_runner.write_samples(records, workdir.samples_file, settings)
  partial.unlink(missing_ok=True)
  logging.info("Wrote %d samples to %s (%d empty generations re-drawn).", len(records), workdir.samples_file,
               runner.last_empty_count)
  return records


def sample_done(config: ml_collections.ConfigDict, workdir: Workdir, data_dir=None) -> bool:
  return provenance.samples_current(config, workdir.samples_file, model_dir(workdir) / "checkpoints")
