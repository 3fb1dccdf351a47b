#!/usr/bin/env bash
# Train on one or more TPU slices that the data-centre network joins (multislice), through
# Cloud TPU queued resources (default) or xpk on GKE, optionally on spot capacity that is
# recreated and resumed when it is preempted.
#
#   launch/tpu_multislice.sh --name ernie-m --zone us-west4-a --accelerator v5e-256 \
#     --num_slices 2 --spot --max_restarts 20 \
#     --gin_file gin/runs/pretrain_stage2.gin --gin_file gin/mesh/fsdp.gin \
#     --model_dir gs://my-bucket/ernie_m/stage2 -- --gin.NUM_STEPS=150000 ...
#
#   launch/tpu_multislice.sh --via xpk --cluster my-gke --name ernie-m --zone us-west4-a \
#     --accelerator v5e-256 --num_slices 2 --max_restarts 20 --gin_file ... --model_dir ...
#
# The mesh's data axis spans the slices (partitioning.MeshConfig.across_slices): the mesh
# presets run unchanged. Every restart resumes from the newest checkpoint in --model_dir,
# which must be a bucket all slices reach. Queued resources: a slice that is preempted
# (state SUSPENDED, FAILED or gone) is deleted and requested again after --restart_wait
# seconds; a job that dies on a live slice is started again on it; each counts against
# --max_restarts. xpk: GKE restarts the JobSet itself (--max-restarts); spot capacity is a
# property of the cluster there (`xpk cluster create --spot`).
# --dry-run prints the commands of one attempt instead of running them. Anything after `--`
# is passed to `ernie-m-jax train` unchanged.
set -euo pipefail

# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"
VIA="queued" NUM_SLICES=1 SPOT=0 MAX_RESTARTS=0 RESTART_WAIT=60 POLL=30 CLUSTER=""
BASE_IMAGE="python:3.11"
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  common_option "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case "$1" in
    --via) VIA="$2"; shift 2 ;;
    --num_slices) NUM_SLICES="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --max_restarts) MAX_RESTARTS="$2"; shift 2 ;;
    --restart_wait) RESTART_WAIT="$2"; shift 2 ;;
    --poll) POLL="$2"; shift 2 ;;
    --cluster) CLUSTER="$2"; shift 2 ;;
    --base_image) BASE_IMAGE="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
require_common
fail() { echo "tpu_multislice.sh: $*" >&2; exit 2; }
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || fail "--num_slices must be a positive integer"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || fail "--max_restarts must be a whole number"
[[ "$MODEL_DIR" == gs://* || "$NUM_SLICES" == 1 ]] ||
  fail "--model_dir $MODEL_DIR: several slices must share the run, use a gs:// bucket"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
train_argv

if [[ "$VIA" == xpk ]]; then
  [[ -n "$CLUSTER" ]] || fail "--via xpk needs --cluster (an xpk cluster: xpk cluster create)"
  [[ "$SPOT" == 0 ]] || fail "--spot with xpk: create the cluster on spot capacity \
(xpk cluster create --spot ...); its workloads restart with --max_restarts"
  # xpk names v5e slices v5litepod-N.
  TPU_TYPE="${ACCELERATOR/#v5e-/v5litepod-}"
  printf -v TRAIN_LINE '%q ' "${TRAIN[@]}"
  COMMAND="pip install -q -e '.[tpu]' -c launch/tpu-constraints.txt && ${TRAIN_LINE% }"
  run xpk workload create --cluster="$CLUSTER" --workload="$NAME" --zone="$ZONE" \
    --tpu-type="$TPU_TYPE" --num-slices="$NUM_SLICES" --max-restarts="$MAX_RESTARTS" \
    --base-docker-image="$BASE_IMAGE" --script-dir="$REPO" --command="$COMMAND"
  exit 0
fi
[[ "$VIA" == queued ]] || fail "--via must be queued or xpk, got $VIA"

QR=(gcloud compute tpus queued-resources)
ARCHIVE="${TMPDIR:-/tmp}/ernie-m-jax-$NAME.tar.gz"
REMOTE="$(worker_command ernie-m-jax.tar.gz "${TRAIN[@]}")"
CREATE=("${QR[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR"
        --runtime-version="$VERSION" --node-count="$NUM_SLICES" --node-prefix="$NAME")
[[ "$SPOT" == 1 ]] && CREATE+=(--spot)

state() {  # the queued resource's state, or GONE
  "${QR[@]}" describe "$NAME" --zone="$ZONE" --format='value(state.state)' 2>/dev/null ||
    echo GONE
}
delete() { run "${QR[@]}" delete "$NAME" --zone="$ZONE" --force --quiet --async || true; }
wait_active() {  # 0 once ACTIVE; 1 if it failed or vanished on the way
  local now
  while true; do
    now="$(state)"
    case "$now" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|GONE) echo "queued resource $NAME: $now" >&2; return 1 ;;
    esac
    sleep "$POLL"
  done
}
# Node i of a queued resource with --node-prefix P is P-i.
copy_and_train() {
  local i
  for ((i = 0; i < NUM_SLICES; i++)); do
    run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME-$i":ernie-m-jax.tar.gz \
      --zone="$ZONE" --worker=all || return 1
  done
  # Every worker of every slice at once; process 0 writes metrics and the progress bar.
  run "${QR[@]}" ssh "$NAME" --zone="$ZONE" --node=all --worker=all --command="$REMOTE"
}

run git -C "$REPO" archive --format=tar.gz -o "$ARCHIVE" HEAD
if [[ "$DRY_RUN" == 1 ]]; then  # one attempt's commands
  run "${CREATE[@]}"
  run "${QR[@]}" describe "$NAME" --zone="$ZONE" --format='value(state.state)'
  copy_and_train
  [[ "$KEEP" == 1 ]] || delete
  exit 0
fi

[[ "$KEEP" == 1 ]] || trap delete EXIT
restarts=0 created=0
while true; do
  if [[ "$created" == 0 ]]; then
    "${CREATE[@]}"
    created=1
  fi
  if wait_active && copy_and_train; then
    if [[ "$(state)" == ACTIVE ]]; then
      echo "tpu_multislice.sh: training finished after $restarts restart(s)"
      exit 0
    fi
  fi
  if ((restarts >= MAX_RESTARTS)); then
    echo "tpu_multislice.sh: stopped after $restarts restart(s) (--max_restarts \
$MAX_RESTARTS); the newest checkpoint in $MODEL_DIR is kept: rerun this command to resume" >&2
    exit 1
  fi
  restarts=$((restarts + 1))
  if [[ "$(state)" != ACTIVE ]]; then  # preempted (or failed): request the slices again
    echo "tpu_multislice.sh: $NAME was preempted; recreating in ${RESTART_WAIT}s \
(restart $restarts of $MAX_RESTARTS)" >&2
    "${QR[@]}" delete "$NAME" --zone="$ZONE" --force --quiet || true
    created=0
  else
    echo "tpu_multislice.sh: the job died on a live slice; starting it again in \
${RESTART_WAIT}s (restart $restarts of $MAX_RESTARTS)" >&2
  fi
  sleep "$RESTART_WAIT"
done
