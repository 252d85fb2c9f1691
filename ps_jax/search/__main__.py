"""`python -m ps_jax.search`: the ps-search command line (see cli.py)."""

import sys

from ps_jax.search import cli

if __name__ == "__main__":
  sys.exit(cli.main())
