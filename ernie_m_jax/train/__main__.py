"""`python -m ernie_m_jax.train ARGS` is `ernie-m-jax train ARGS`: one entry point."""

import sys

from ernie_m_jax import cli, huge_pages

huge_pages.restart_with_huge_pages()
sys.exit(cli.main(["train", *sys.argv[1:]]))
