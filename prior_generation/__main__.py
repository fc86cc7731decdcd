"""``python -m prior_generation -d DATASET``: see :mod:`prior_generation.cli`."""

import sys

from prior_generation.cli import main

if __name__ == "__main__":
    sys.exit(main())
