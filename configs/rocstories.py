r"""ROCStories five-sentence stories, unconditional (paper Table 1).

Paper setting (`facebook/bart-base`, 12 x 768 denoiser, 100k steps at batch 64, 250 DDIM steps):
  python -m ldlg.main --config=configs/rocstories.py --workdir=runs/rocstories --mode=pipeline --data_dir=../shared/data
  Hardware: an accelerator (one GPU or a TPU slice; launch/gpu.sh, launch/tpu_pod.sh). Not yet run by this
  project: its time and results will be measured on the first GPU session and recorded in the README.
  The paper reports MAUVE, perplexity and diversity for this setting (Lovelace et al., Tables 1/5).
  ROCStories has no train split locally (see shared/data/rocstories/SOURCE.md): locally this trains on the
  1,000-story validation pool and evaluates on the 4,000-story test pool. With the full corpus set train_split=train.
Offline CPU setting (`:cpu`; `:ar_cpu` is the matched GPT-2 baseline on the same data): our own tokenizer + small
BART trained on the corpus, then a small denoiser.
  python -m ldlg.main --config=configs/rocstories.py:cpu --workdir=runs/rocstories_cpu --mode=pipeline \
      --data_dir=../shared/data
  Hardware: 2 CPU cores. Time and results: see the README's results section.
"""

from configs import default
from ldlg.data import datasets


def get_config(arg: str | None = None):
  config = default.get_config()
  config.data.name = "rocstories"
  config.data.train_split = "validation"
  config.data.eval_split = "test"
  config.data.max_length = 128
  config.model.max_len = config.data.get_ref("max_length")
  config.model.num_classes = datasets.DATASETS["rocstories"].num_classes  # 0: unconditional
  return default.apply_variant(config, arg, "rocstories")
