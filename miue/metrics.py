"""``miue.metrics`` is :mod:`miue.evaluation.metrics` (the evaluation layer); this name stays importable."""

import sys

from miue.evaluation import metrics as _module

sys.modules[__name__] = _module
