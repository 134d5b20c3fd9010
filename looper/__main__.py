import sys

from looper.cli import main

sys.exit(main())
