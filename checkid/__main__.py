import sys

from checkid.cli import main

sys.exit(main())
