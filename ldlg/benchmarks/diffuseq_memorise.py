r"""Can a DiffuSeq network memorise a few (source, target) pairs from the source alone, and how long does it take?

  python -m ldlg.benchmarks.diffuseq_memorise --data_dir=../shared/data [--num_pairs=8] [--dim=128] \
      [--num_layers=4] [--num_heads=4] [--embed_dim=128] [--dropout=0] [--lr=1e-3] [--num_steps=1500] \
      [--freeze_embedding] [--segment_embedding] [--tokenizer=<a run's tokenizer folder>] [--out=<file.json>]

The first `num_pairs` training pairs of E2E are framed as DiffuSeq trains on them (`framing.py`: `[<s> source </s>
; target </s> ; <pad> ...]`, learned padding) and the DiffuSeq loss (`losses.make_per_example_loss_fn`) is
minimised with every example at t = T - 1: the target is pure noise, so only the source can tell the examples apart
and accuracy above the mean predictor's means the network reads the source. Adam without schedule, full batch.
Prints (and with --out writes) JSON: the settings and, every `eval_every` steps, the loss terms and the accuracy of
x̂0 rounded to tokens over the target region ("region_accuracy", pads included) and over the text alone.

Words are the default vocabulary (a word-level tokenizer over these pairs); `--tokenizer` uses a run's BPE instead.
This is where the README's "long plateau" table comes from.
"""
import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from ldlg.methods.gaussian.schedules import get_schedule
from ldlg.methods.seq2seq import framing
from ldlg.methods.seq2seq import losses
from ldlg.methods.seq2seq.network import Seq2SeqDenoiser

FLAGS = flags.FLAGS


def memorise(sources, targets, tokenizer, *, dim, num_layers, num_heads, embed_dim, dropout, lr, num_steps,
             eval_every, num_timesteps, max_len, max_source_len, freeze_embedding, seed,
             segment_embedding=False) -> list[dict]:
  """Trains on the pairs at t = T - 1; returns one record per `eval_every` steps (see the module docstring)."""
  from ldlg.codecs import tokens  # pylint: disable=import-outside-toplevel
  ids = tokens.special_ids(tokenizer)
  pairs = framing.frame_pairs(sources, targets, tokenizer, ids, max_len=max_len, max_source_len=max_source_len)
  batch = {k: jnp.asarray(v) for k, v in framing.pack(pairs, range(len(pairs)), max_len=max_len,
                                                      pad_id=ids["pad"]).items()}
  batch["t"] = jnp.full((len(pairs),), num_timesteps - 1, jnp.int32)
  network = Seq2SeqDenoiser(vocab_size=len(tokenizer), embed_dim=embed_dim, dim=dim, num_layers=num_layers,
                            num_heads=num_heads, max_len=max_len, dropout=dropout, num_timesteps=num_timesteps,
                            segment_embedding=segment_embedding)
  schedule = get_schedule("sqrt", num_timesteps)
  params = network.init(jax.random.PRNGKey(seed), batch["input_ids"][:1], jnp.zeros((1,), jnp.int32),
                        jnp.ones((1, max_len), bool), method=Seq2SeqDenoiser.init_all)["params"]
  train_fn = losses.make_per_example_loss_fn(network, schedule, pad_id=ids["pad"], train=dropout > 0)
  eval_fn = losses.make_per_example_loss_fn(network, schedule, pad_id=ids["pad"], train=False)
  tx = optax.adam(lr)
  if freeze_embedding:
    labels = {k: "frozen" if k == "word_embedding" else "trained" for k in params}
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    grads, _ = jax.grad(lambda p: train_fn(p, key, batch)[:2], has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def evaluate(params, key):
    _, metrics, _, _ = eval_fn(params, key, batch)
    # Text accuracy: the target's real tokens only (the diagnostic's text_accuracy).
    emb = params["word_embedding"]
    z = losses.partial_q_sample(schedule, network.apply({"params": params}, batch["input_ids"],
                                                        method=Seq2SeqDenoiser.embed),
                                batch["t"], jax.random.normal(key, batch["input_ids"].shape + (embed_dim,)),
                                batch["source_mask"])
    hat = network.apply({"params": params}, z, batch["t"], jnp.ones_like(batch["mask"]), batch["source_mask"])
    hit = jnp.argmax(jnp.einsum("bld,vd->blv", hat, emb), -1) == batch["input_ids"]
    text = batch["mask"] & ~batch["source_mask"]
    return metrics, jnp.sum(hit & text) / jnp.sum(text)

  key, eval_key = jax.random.PRNGKey(seed + 1), jax.random.PRNGKey(seed + 2)
  records = []
  for i in range(num_steps + 1):
    if i % eval_every == 0 or i == num_steps:
      metrics, text_acc = jax.device_get(evaluate(params, eval_key))
      records.append({"step": i, "loss": float(metrics["loss"]), "mse": float(metrics["mse"]),
                      "region_accuracy": float(metrics["x0_token_acc"]), "text_accuracy": float(text_acc)})
      print(json.dumps(records[-1]), flush=True)
    if i < num_steps:
      params, opt_state = step(params, opt_state, jax.random.fold_in(key, i))
  return records


def main(argv):
  del argv
  from ldlg.data.datasets import load_split  # pylint: disable=import-outside-toplevel
  records = load_split("e2e", "train", FLAGS.data_dir)
  n = FLAGS.num_pairs
  sources, targets = [records[i]["source"] for i in range(n)], [records[i]["text"] for i in range(n)]
  if FLAGS.tokenizer:
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = AutoTokenizer.from_pretrained(FLAGS.tokenizer)
  else:
    from ldlg.data.testing import make_word_tokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = make_word_tokenizer(sources + targets, model_max_length=FLAGS.max_len)
  settings = {k: FLAGS[k].value for k in ("num_pairs", "dim", "num_layers", "num_heads", "embed_dim", "dropout",
                                          "lr", "num_steps", "num_timesteps", "freeze_embedding", "tokenizer",
                                          "seed", "segment_embedding")}
  curve = memorise(sources, targets, tokenizer, **{k: v for k, v in settings.items()
                                                   if k not in ("num_pairs", "tokenizer")},
                   eval_every=FLAGS.eval_every, max_len=FLAGS.max_len, max_source_len=FLAGS.max_source_len)
  result = {"settings": settings, "curve": curve}
  print(json.dumps(result))
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as fh:
      json.dump(result, fh, indent=1)


def _define_flags() -> None:
  # Defined only when run as a program: at import they would clash with other benchmarks' flags of the same name
  # (--data_dir) in one process, as in a shared test worker.
  flags.DEFINE_string("data_dir", None, "raw-data root (holds e2e/)", required=True)
  flags.DEFINE_integer("num_pairs", 8, "first N training pairs of E2E")
  flags.DEFINE_integer("dim", 128, "transformer width")
  flags.DEFINE_integer("num_layers", 4, "transformer blocks")
  flags.DEFINE_integer("num_heads", 4, "attention heads")
  flags.DEFINE_integer("embed_dim", 128, "embedding width d")
  flags.DEFINE_float("dropout", 0.0, "dropout (active in training)")
  flags.DEFINE_float("lr", 1e-3, "Adam learning rate")
  flags.DEFINE_integer("num_steps", 1500, "optimizer steps")
  flags.DEFINE_integer("eval_every", 100, "steps between records")
  flags.DEFINE_integer("num_timesteps", 2000, "T of the sqrt schedule")
  flags.DEFINE_integer("max_len", 96, "sequence length L")
  flags.DEFINE_integer("max_source_len", 48, "source tokens at most")
  flags.DEFINE_bool("freeze_embedding", False, "keep the N(0, 1) embedding fixed (no shrinking shortcut)")
  flags.DEFINE_bool("segment_embedding", False, "tell each position its segment (Seq2SeqDenoiser.segment_embedding)")
  flags.DEFINE_string("tokenizer", "", "a Hugging Face tokenizer folder (default: words of the pairs)")
  flags.DEFINE_integer("seed", 0, "init and noise seed")
  flags.DEFINE_string("out", "", "write the JSON here too")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
