import sys

from miue.cli import entry

sys.exit(entry())
