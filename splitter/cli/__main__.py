"""``python -m splitter.cli`` (used under torchrun)."""

import sys

from splitter.cli import main

sys.exit(main())
