"""``python -m checkid``: the command line, and the only ``sys.exit``."""
from __future__ import annotations

import sys

from checkid.cli import main

sys.exit(main())
