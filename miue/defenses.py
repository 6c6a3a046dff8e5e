"""``miue.defenses`` is :mod:`miue.evaluation.defenses` (the evaluation layer); this name stays importable."""

import sys

from miue.evaluation import defenses as _module

sys.modules[__name__] = _module
