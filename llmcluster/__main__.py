"""``python -m llmcluster``: the same entry point as the ``llmcluster`` console script."""

import sys

from llmcluster.cli import main

sys.exit(main())
