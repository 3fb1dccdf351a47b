# Shared by the TPU launchers (sourced, not run): printing commands under --dry-run, and the
# command every worker runs: unpack this repository, install it with the tested TPU stack
# (launch/tpu-constraints.txt), then `ernie-m-jax train`.

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
