"""``python -m batchcam.bench``: the same as ``python -m batchcam bench``."""

import sys

from .cli import main

sys.exit(main())
