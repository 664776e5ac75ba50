"""``python -m batchcam.bench``: the same as ``python -m batchcam bench``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
