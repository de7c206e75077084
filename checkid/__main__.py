import sys

from checkid.engine.cli import main

sys.exit(main())
