"""`python -m ernie_m_jax.train ARGS` is `ernie-m-jax train ARGS`: one entry point."""

import sys

from ernie_m_jax import cli

sys.exit(cli.main(["train", *sys.argv[1:]]))
