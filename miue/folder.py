"""``miue.folder`` is :mod:`miue.data.folder` (the data layer); this name stays importable."""

import sys

from miue.data import folder as _module

sys.modules[__name__] = _module
