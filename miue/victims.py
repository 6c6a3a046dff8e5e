"""``miue.victims`` is :mod:`miue.evaluation.victims` (the evaluation layer); this name stays importable."""

import sys

from miue.evaluation import victims as _module

sys.modules[__name__] = _module
