#!/usr/bin/env bash
# Train on several GPU hosts over ssh: one process per host (default) or one per GPU, process
# 0's host is the coordinator. The repo must be installed at the same path on every host
# (`pip install -e . 'jax[cuda12]'`). For SLURM clusters see launch/slurm.sbatch instead.
#
#   launch/gpu_hosts.sh --hosts gpu-a,gpu-b --gpus_per_host 8 \
#     --gin_file gin/runs/pretrain_stage1.gin --gin_file gin/mesh/fsdp.gin \
#     --model_dir /shared/ernie_m/stage1 -- --gin.NUM_STEPS=150000 ...
#
# --dry-run prints the commands instead of running them.
set -euo pipefail

HOSTS="" GPUS=8 PER_GPU=0 PORT=8476 WORKDIR="$(cd "$(dirname "$0")/.." && pwd)" MODEL_DIR=""
DRY_RUN=0 GIN_FILES=() EXTRA=()
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hosts) HOSTS="$2"; shift 2 ;;
    --gpus_per_host) GPUS="$2"; shift 2 ;;
    --per_gpu) PER_GPU=1; shift ;;
    --port) PORT="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --gin_file) GIN_FILES+=("$2"); shift 2 ;;
    --model_dir) MODEL_DIR="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
[[ -n "$HOSTS" && -n "$MODEL_DIR" && ${#GIN_FILES[@]} -gt 0 ]] || {
  echo "need --hosts, --model_dir and at least one --gin_file" >&2; exit 2; }
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "--gpus_per_host must be a positive integer" >&2; exit 2; }

IFS=, read -r -a HOST_LIST <<<"$HOSTS"
PER_HOST=$([[ "$PER_GPU" == 1 ]] && echo "$GPUS" || echo 1)
COUNT=$(( ${#HOST_LIST[@]} * PER_HOST ))
COORDINATOR="${HOST_LIST[0]}:$PORT"
TRAIN=(ernie-m-jax train --model_dir="$MODEL_DIR")
for f in "${GIN_FILES[@]}"; do TRAIN+=(--gin_file="$f"); done
TRAIN+=("${EXTRA[@]}")
printf -v TRAIN_LINE '%q ' "${TRAIN[@]}"
TRAIN_LINE="${TRAIN_LINE% }"

pids=()
id=0
for host in "${HOST_LIST[@]}"; do
  for ((local = 0; local < PER_HOST; local++)); do
    visible=""
    [[ "$PER_GPU" == 1 ]] && visible="CUDA_VISIBLE_DEVICES=$local "
    remote="cd $(printf '%q' "$WORKDIR") && . .venv/bin/activate && ${visible}\
JAX_COORDINATOR_ADDRESS=$COORDINATOR JAX_NUM_PROCESSES=$COUNT JAX_PROCESS_ID=$id $TRAIN_LINE"
    if [[ "$DRY_RUN" == 1 ]]; then
      printf '%q ' ssh "$host" "$remote"; printf '\n'
    else
      ssh "$host" "$remote" 2>&1 | sed "s/^/[$id] /" &
      pids+=($!)
    fi
    id=$((id + 1))
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
