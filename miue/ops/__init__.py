"""The public ops (docs/ops.md): ``grouped_normalize``, ``supcon_loss``, ``intra_class_cosine_loss``,
``pgd_linf_step_`` and ``project_linf_``, and ``supcon_views_loss`` (``miue.compat``'s losses).

Each op is one ``torch.library.custom_op`` in the ``miue::`` namespace with a fake kernel
and (for the differentiable ones) a registered autograd formula, so it works under
``torch.compile`` and ``torch.library.opcheck``. The op carries the name of the backend
that runs it as its last (string) argument; the public functions validate their arguments,
pick the backend (:func:`miue.resolve_backend`) and call the op.

One file per op, one name per op: op ``X`` (``miue::X``, trailing ``_`` of an in-place op
dropped) is the module ``miue/ops/X.py`` (the custom op, its fake kernel, autograd formula,
public function and ``sample_inputs``), its float64 oracle ``miue.ops.reference``, its C++
kernels ``csrc/cpu/X.cpp`` and ``csrc/cuda/X.cu`` (schemas in ``csrc/miue.cpp``), its Triton
kernels ``kernels/X.py`` (installed as ``miue.kernels``) and its tests ``tests/test_X.py``.
The rest of this package: argument checks (``_validate``), shared helpers (``_common``), the
backend registry and dispatcher (``_backend``), the adapters of the compiled extension
``miue._C`` (``_extension`` loads it, ``_cpp`` calls it) and the loss modules (``modules``).

The names below are the functions: ``miue.ops.supcon_loss`` is the function, not its module
(reach a module with ``importlib.import_module("miue.ops.supcon_loss")`` or ``from
miue.ops.supcon_loss import sample_inputs``).
"""

from __future__ import annotations

from miue.ops.grouped_normalize import grouped_normalize
from miue.ops.intra_class_cosine_loss import intra_class_cosine_loss
from miue.ops.pgd_linf_step import pgd_linf_step_
from miue.ops.project_linf import project_linf_
from miue.ops.supcon_loss import supcon_loss
from miue.ops.supcon_views_loss import supcon_views_loss
from miue.ops.modules import IntraClassCosineLoss, MIUESupConLoss

__all__ = [
    "grouped_normalize",
    "supcon_loss",
    "intra_class_cosine_loss",
    "pgd_linf_step_",
    "project_linf_",
    "supcon_views_loss",
    "MIUESupConLoss",
    "IntraClassCosineLoss",
]
