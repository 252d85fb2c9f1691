"""`python -m data_builders ...`: see `data_builders.build`."""

import sys

from data_builders import build

if __name__ == "__main__":
  sys.exit(build.main())
