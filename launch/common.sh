# Shared by the TPU launchers (sourced, not run): the options they all take, printing
# commands under --dry-run, and the command every worker runs: unpack this repository,
# install it with the tested TPU stack (launch/tpu-constraints.txt), then `ernie-m-jax train`.

NAME="" ZONE="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" MODEL_DIR="" DRY_RUN=0 KEEP=0
GIN_FILES=() EXTRA=()

# One of the shared options at "$1" (value in "$2"): sets its variable and SHIFT to the words
# it took; SHIFT=0 when "$1" is not one of them.
common_option() {
  SHIFT=2
  case "$1" in
    --name) NAME="$2" ;;
    --zone) ZONE="$2" ;;
    --accelerator) ACCELERATOR="$2" ;;
    --version) VERSION="$2" ;;
    --gin_file) GIN_FILES+=("$2") ;;
    --model_dir) MODEL_DIR="$2" ;;
    --keep) KEEP=1; SHIFT=1 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    *) SHIFT=0 ;;
  esac
}

# Exit 2 naming the first shared option that is missing.
require_common() {
  local required
  for required in NAME ZONE ACCELERATOR MODEL_DIR; do
    [[ -n "${!required}" ]] || { echo "missing --$(tr 'A-Z' 'a-z' <<<"$required")" >&2; exit 2; }
  done
  [[ ${#GIN_FILES[@]} -gt 0 ]] || { echo "missing --gin_file" >&2; exit 2; }
}

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

# The worker's shell command: $1 the archive's name in the worker's home, then the train argv.
worker_command() {
  local archive="$1" line
  shift
  printf -v line '%q ' "$@"
  printf '%s' "set -e; mkdir -p ernie-m-jax && tar -xzf $archive -C ernie-m-jax \
&& cd ernie-m-jax && python3 -m venv .venv && . .venv/bin/activate \
&& pip install -q -e '.[tpu]' -c launch/tpu-constraints.txt && ${line% }"
}

# The train argv: model dir, gin files, then whatever came after `--`.
train_argv() {  # sets TRAIN from MODEL_DIR, GIN_FILES and EXTRA
  TRAIN=(ernie-m-jax train --model_dir="$MODEL_DIR")
  local f
  for f in "${GIN_FILES[@]}"; do TRAIN+=(--gin_file="$f"); done
  TRAIN+=("${EXTRA[@]}")
}
