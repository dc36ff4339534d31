r"""AG News descriptions, 4 topics, class-conditional (paper Table 5).

Paper setting (`facebook/bart-base`, 12 x 768 denoiser, 100k steps at batch 64, 250 DDIM steps):
  python -m ldlg.main --config=configs/ag_news.py --workdir=runs/ag_news --mode=pipeline --data_dir=../shared/data
  Hardware: an accelerator (one GPU or a TPU slice; launch/gpu.sh, launch/tpu_pod.sh). Not yet run by this
  project: its time and results will be measured on the first GPU session and recorded in the README.
  The paper reports MAUVE, perplexity and diversity for this setting (Lovelace et al., Tables 1/5).
  Locally the AG News train split is a 10,001-row subset (9,001 train / 1,000 validation).
Offline CPU setting (`:cpu`; `:ar_cpu` is the matched GPT-2 baseline on the same data): our own tokenizer + small
BART trained on the corpus, then a small denoiser; the class is added to the time embedding and the sampler uses
classifier-free guidance w = 5 (configs/default.py, `with_class_recipe`, chosen on SST: not measured on AG News).
  python -m ldlg.main --config=configs/ag_news.py:cpu --workdir=runs/ag_news_cpu --mode=pipeline \
      --data_dir=../shared/data
  Hardware: 2 CPU cores. Time and results: see the README's results section.
"""

from configs import default
from ldlg.data import datasets


def get_config(arg: str | None = None):
  config = default.get_config()
  config.data.name = "ag_news"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.max_length = 64
  config.model.max_len = config.data.get_ref("max_length")
  config.model.num_classes = datasets.DATASETS["ag_news"].num_classes  # 4; 0 would train unconditionally
  return default.apply_variant(config, arg, "ag_news")
