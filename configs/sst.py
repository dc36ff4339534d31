r"""Sentence-level SST, binary sentiment, class-conditional (paper Table 5).

Paper setting (`facebook/bart-base`, 12 x 768 denoiser, 100k steps at batch 64, 250 DDIM steps):
  python -m ldlg.main --config=configs/sst.py --workdir=runs/sst --mode=pipeline --data_dir=../shared/data
  Hardware: an accelerator (one GPU or a TPU slice; launch/gpu.sh, launch/tpu_pod.sh). Not yet run by this
  project: its time and results will be measured on the first GPU session and recorded in the README.
  The paper reports MAUVE, perplexity and diversity for this setting (Lovelace et al., Tables 1/5).

Offline CPU setting (`:cpu`; `:ar_cpu` is the matched GPT-2 baseline on the same data): our own tokenizer + small
BART trained on the corpus, then a small denoiser; the class is added to the time embedding and the sampler uses
classifier-free guidance w = 5 (configs/default.py, `with_class_recipe`: the README's recipe ablation).
  python -m ldlg.main --config=configs/sst.py:cpu --workdir=runs/sst_cpu --mode=pipeline \
      --data_dir=../shared/data
  Hardware: 2 CPU cores. Time and results: see the README's results section.

The official code's choices as variants (configs/default.py: make_official_v1, make_later_version), on the `:cpu`
sizing or (without the `cpu_` prefix) at paper size:
  python -m ldlg.main --config=configs/sst.py:cpu_official_v1 --workdir=runs/sst_cpu_v1 --mode=pipeline \
      --data_dir=../shared/data
  python -m ldlg.main --config=configs/sst.py:cpu_later --workdir=runs/sst_cpu_later --mode=pipeline \
      --data_dir=../shared/data
  Hardware: 2 CPU cores, as `:cpu`. Measured against `:cpu` in the README's "Recipe ablation on SST"
  (`python -m ldlg.benchmarks.recipe`).
"""

from configs import default
from ldlg.data import datasets


def get_config(arg: str | None = None):
  config = default.get_config()
  config.data.name = "sst"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.max_length = 64
  config.model.max_len = config.data.get_ref("max_length")
  config.model.num_classes = datasets.DATASETS["sst"].num_classes  # 2; 0 would train unconditionally
  return default.apply_variant(config, arg, "sst")
