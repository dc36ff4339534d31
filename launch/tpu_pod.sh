#!/usr/bin/env bash
# Runs an ldlg job on every host of a Cloud TPU pod slice. Idempotent: re-running re-syncs the code, re-installs
# (a no-op when nothing changed) and resumes the job from its latest checkpoint in the workdir.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=/mnt/shared/runs/e2e \
#     bash launch/tpu_pod.sh --config=configs/e2e.py --mode=pipeline
#
# The workdir must be visible to every host as a *path*: a shared filesystem, or a GCS bucket mounted with
# gcsfuse (e.g. /mnt/gcs/runs/e2e). gs:// URLs are not read directly yet (latent shards are memory-mapped; the
# job says so and stops). Orbax writes checkpoints from all hosts, and only process 0 writes metrics and
# samples. Each host reads its own share of every global batch.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
: "${WORKDIR:?set WORKDIR to a path every host can reach (a shared mount, e.g. gcsfuse)}"
REPO_DIR=${REPO_DIR:-ldlg}
DATA_DIR=${LDLG_DATA_DIR:-}

here=$(cd "$(dirname "$0")/.." && pwd)
# Copy the working tree (not just what is committed) so what runs is what you see.
tar -C "$here" --exclude=.git --exclude=runs --exclude=.venv -czf /tmp/ldlg_src.tgz .
gcloud compute tpus tpu-vm scp /tmp/ldlg_src.tgz "$TPU_NAME":/tmp/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  mkdir -p ~/$REPO_DIR && tar -C ~/$REPO_DIR -xzf /tmp/ldlg_src.tgz
  cd ~/$REPO_DIR
  python3 -m venv ~/ldlg_venv && . ~/ldlg_venv/bin/activate
  pip install -q -U pip && pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  LDLG_DISTRIBUTED=1 LDLG_DATA_DIR=$DATA_DIR nohup python -m ldlg.main --workdir=$WORKDIR $* > ~/ldlg.log 2>&1 &
  echo started on \$(hostname)
"
echo "Follow host 0: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=0 --command 'tail -f ~/ldlg.log'"
