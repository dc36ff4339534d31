"""Encode / decode throughput of the BART autoencoder: `python -m ldlg.codecs.bart.benchmark`.

Prints one JSON object: for a tiny config and a bart-base-sized config (random init: no weights can be
downloaded here), sentences/s of `encode` and of `decode` (4 beams and greedy, both with the paper's
repetition penalty 1.2 and no repeated trigrams), measured after a warm-up call that compiles. Random
models rarely emit EOS, so their decode runs to `max_length`: a worst case (a trained model stops at the
sentence's end, ~30 tokens on E2E); `--model_dir` adds the numbers of a saved (e.g. pretrained) model.

Flags: --num_sentences (default 64), --batch_size (default 32), --max_length (decode, default 64),
--configs (comma-separated subset of tiny,bart-base, or empty), --model_dir (a saved autoencoder),
--data (a text file, one sentence per line or E2E's `MR||text`; default: synthetic sentences).
"""
import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np
import transformers

from ldlg.codecs.bart import autoencoder as autoencoder_lib
from ldlg.codecs.bart import tokenizer as tokenizer_lib

CONFIGS = {
    "tiny": dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, vocab_size=None),
    # BartConfig defaults are bart-large's; these are bart-base's.
    "bart-base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                      vocab_size=50265),
}


def _sentences(path: str | None, n: int) -> list[str]:
  if path:
    with open(path) as f:
      lines = [l.split("||", 1)[-1].strip() for l in f if l.strip()]
    return (lines * (n // max(len(lines), 1) + 1))[:n]
  rng = np.random.default_rng(0)
  words = ("the a restaurant near city centre serves cheap food family friendly coffee shop "
           "rated high low price range English French Italian pub river").split()
  return [" ".join(rng.choice(words, size=rng.integers(8, 25))) + " ." for _ in range(n)]


def _timed(fn, repeats: int = 1) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def random_autoencoder(name: str, tokenizer) -> autoencoder_lib.Autoencoder:
  kwargs = dict(CONFIGS[name])
  vocab = kwargs.pop("vocab_size") or len(tokenizer)
  config = transformers.BartConfig(vocab_size=max(vocab, len(tokenizer)), max_position_embeddings=1024,
                                   forced_bos_token_id=0, forced_eos_token_id=2, **kwargs)
  return autoencoder_lib.Autoencoder.from_config(config, tokenizer, max_length=64)


def benchmark(ae: autoencoder_lib.Autoencoder, texts: list[str], *, batch_size: int,
              max_length: int) -> dict:
  """Throughput numbers for one autoencoder."""
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(ae.params))
  encode = lambda: ae.encode(texts, batch_size=batch_size)[0]
  encode()  # compile
  t_enc = _timed(encode, repeats=2)
  latents, mask = ae.encode(texts, batch_size=batch_size)
  out = dict(num_params=int(num_params), latent_shape=list(latents.shape),
             encode_sentences_per_s=len(texts) / t_enc)
  for label, opts in (("decode_beam4", dict(num_beams=4)),
                      ("decode_greedy", dict(num_beams=1))):
    run = lambda: ae.decode_ids(latents, mask, batch_size=batch_size, max_length=max_length, **opts)[0]
    t0 = time.perf_counter()
    seqs = run()  # includes compile
    t_first = time.perf_counter() - t0
    t = _timed(run)
    eos_at = [(list(s).index(2, 1) if 2 in s[1:] else len(s)) for s in seqs]
    out[label] = dict(sentences_per_s=len(texts) / t, seconds=t, first_call_seconds=t_first,
                      mean_tokens=float(np.mean(eos_at)))
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_sentences", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_length", type=int, default=64)
  parser.add_argument("--configs", default="tiny,bart-base")
  parser.add_argument("--data", default=None)
  parser.add_argument("--model_dir", default=None)
  args = parser.parse_args(argv)
  texts = _sentences(args.data, args.num_sentences)
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = tokenizer_lib.train_tokenizer(texts * 4, 1000, tmp, min_frequency=1)
  result = dict(device=str(jax.devices()[0]), platform=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), num_sentences=len(texts), batch_size=args.batch_size,
                decode_max_length=args.max_length, jax=jax.__version__)
  for name in filter(None, args.configs.split(",")):
    result[name] = benchmark(random_autoencoder(name, tokenizer), texts, batch_size=args.batch_size,
                             max_length=args.max_length)
  if args.model_dir:
    ae = autoencoder_lib.Autoencoder.from_pretrained(args.model_dir, max_length=64)
    result["model_dir"] = dict(path=args.model_dir, **benchmark(
        ae, texts, batch_size=args.batch_size, max_length=args.max_length))
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
