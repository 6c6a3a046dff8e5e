"""``python -m miue.compat [options] SCRIPT [ARGS ...]``: run a poisoning script accelerated
(miue/compat/runtime.py)."""

import sys

from miue.compat.runtime import main

sys.exit(main())
