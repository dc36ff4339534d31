#!/usr/bin/env bash
# Runs an ldlg job on the local GPUs (all visible ones are used for data parallelism through pmap).
#
#   bash launch/gpu.sh --config=configs/e2e.py --workdir=runs/e2e --mode=pipeline --data_dir=../shared/data
#
# Installs JAX with CUDA into .venv-gpu on first use. Flax BART needs transformers<5 (setup.cfg pins it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .venv-gpu ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q -U pip
  .venv-gpu/bin/pip install -q -e . "jax[cuda12]"
fi
# Let XLA take memory as needed rather than 75% up front, so the frozen BART and the denoiser can share the GPU.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec .venv-gpu/bin/python -m ldlg.main "$@"
