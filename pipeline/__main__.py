"""``python -m pipeline ...``: the same as the ``vfmtok-pipeline`` command (``pipeline/cli.py``)."""

import sys

from pipeline.cli import main

sys.exit(main())
