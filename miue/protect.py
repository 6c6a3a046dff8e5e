"""``miue.protect`` is :mod:`miue.data.protect` (the data layer); this name stays importable."""

import sys

from miue.data import protect as _module

sys.modules[__name__] = _module
