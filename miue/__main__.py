import sys

from miue.cli import main

sys.exit(main())
