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

# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  common_option "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case "$1" in
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
require_common

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
