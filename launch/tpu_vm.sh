#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, install this repo on every worker, run
# `ernie-m-jax train` on all workers at once (JAX finds the other workers itself), stream the
# logs, delete the slice. Several slices, spot capacity and GKE: launch/tpu_multislice.sh.
#
#   launch/tpu_vm.sh --name ernie-m --zone us-central2-b --accelerator v4-32 \
#     --gin_file gin/runs/pretrain_stage1.gin --gin_file gin/mesh/fsdp.gin \
#     --model_dir gs://my-bucket/ernie_m/stage1 -- --gin.NUM_STEPS=150000 ...
#
# --dry-run prints every command instead of running it. Anything after `--` is passed to
# `ernie-m-jax train` unchanged (gin bindings, typically).
set -euo pipefail

NAME="" ZONE="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" MODEL_DIR="" DRY_RUN=0 KEEP=0
GIN_FILES=() EXTRA=()
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --gin_file) GIN_FILES+=("$2"); shift 2 ;;
    --model_dir) MODEL_DIR="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
for required in NAME ZONE ACCELERATOR MODEL_DIR; do
  [[ -n "${!required}" ]] || { echo "missing --$(tr 'A-Z' 'a-z' <<<"$required")" >&2; exit 2; }
done
[[ ${#GIN_FILES[@]} -gt 0 ]] || { echo "missing --gin_file" >&2; exit 2; }

# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="${TMPDIR:-/tmp}/ernie-m-jax-$NAME.tar.gz"
TPU=(gcloud compute tpus tpu-vm)
train_argv
REMOTE="$(worker_command ernie-m-jax.tar.gz "${TRAIN[@]}")"

run git -C "$REPO" archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${TPU[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$VERSION"
[[ "$KEEP" == 1 ]] || trap 'run "${TPU[@]}" delete "$NAME" --zone="$ZONE" --quiet' EXIT
run "${TPU[@]}" scp "$ARCHIVE" "$NAME":ernie-m-jax.tar.gz --zone="$ZONE" --worker=all
# Output of every worker is streamed here; process 0 writes metrics and the progress bar.
run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all --command="$REMOTE"
