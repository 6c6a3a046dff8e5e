"""``miue.release`` is :mod:`miue.data.release` (the data layer); this name stays importable."""

import sys

from miue.data import release as _module

sys.modules[__name__] = _module
