"""``patch``: swap a codebase's hand-written loss and update code for ``miue.compat``'s, without
editing it, and say what was swapped.

Every replacement ``miue.compat`` knows is one :class:`Replacement` in :data:`KNOWN`: the name it
is found under in a module (a function, a class, or ``Class.method``), what it replaces it with,
and the codebase it comes from. ``patch(target)`` looks for each in ``target`` (a module, or a
class for its methods), checks that the found object's signature is the one the replacement
takes, swaps it, and returns a :class:`PatchHandle` that lists what was replaced and what was
skipped and why; ``undo()`` (or leaving a ``with`` block) puts the originals back. Nothing
replaced is a warning (:class:`PatchWarning`), or a ``LookupError`` with ``strict=True``.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from miue.compat.losses import SupConLoss, nt_xent
from miue.compat.updates import min_max_step, min_min_step, pgd_update, pgd_update_

__all__ = ["KNOWN", "PatchHandle", "PatchWarning", "Replacement", "patch"]


class PatchWarning(UserWarning):
    """``patch`` found nothing to replace, or skipped a name it knows."""


@dataclass(frozen=True)
class Replacement:
    """One known swap: ``name`` is ``func``, ``Class`` or ``Class.method`` as the codebase spells it;
    ``make(original)`` returns what replaces it (it may read the original, e.g. its source)."""

    name: str
    kind: str  # "function", "class" or "method"
    make: Callable
    codebase: str


# ----------------------------------------------------------------------------- the replacements


def _zero_positive_of(cls) -> str:
    """SupContrast since December 2023 guards anchors without positives (``mask_pos_pairs``,
    ``< 1e-6``); the 2020 version, which Contrastive Poisoning copied, divides by zero (NaN)."""
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError, AttributeError):
        return "zero"
    return "zero" if ("1e-6" in src or "mask_pos_pairs" in src) else "nan"


def _loss_class(original):
    """A :class:`SupConLoss` under the original's name, with its zero-positive behaviour."""
    return type(original.__name__, (SupConLoss,), {
        "zero_positive": _zero_positive_of(original), "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": f"miue.compat.SupConLoss standing in for {original.__module__}.{original.__qualname__}"})


def _em_attack(self, images, labels, model, optimizer, criterion, random_noise, step):
    """``PerturbationTool.min_min_attack`` / ``min_max_attack`` of Unlearnable-Examples (and
    APBench's copies), with :func:`min_min_step` / :func:`min_max_step` as the update: the same
    random start, losses, model calls and returned ``(perturb_img, eta)``."""
    if random_noise is None:
        random_noise = torch.empty(images.shape, dtype=torch.float32).uniform_(
            -self.epsilon, self.epsilon).to(images.device)
    perturb_img = torch.clamp(images.detach() + random_noise, 0, 1).requires_grad_(True)
    eta = random_noise
    for _ in range(self.num_steps):
        perturb_img.grad = None
        model.zero_grad()
        if isinstance(criterion, torch.nn.CrossEntropyLoss):
            if step is min_min_step and hasattr(model, "classify"):
                model.classify = True
            loss = criterion(model(perturb_img), labels)
        else:
            _, loss = criterion(model, perturb_img, labels, optimizer)
        loss.backward()
        perturb_img, eta = step(perturb_img, images.detach(), perturb_img.grad, self.step_size, self.epsilon)
        perturb_img.requires_grad_(True)
    return perturb_img, eta


def _min_min_attack(self, images, labels, model, optimizer, criterion, random_noise=None, sample_wise=False):
    return _em_attack(self, images, labels, model, optimizer, criterion, random_noise, min_min_step)


def _min_max_attack(self, images, labels, model, optimizer, criterion, random_noise=None, sample_wise=False):
    return _em_attack(self, images, labels, model, optimizer, criterion, random_noise, min_max_step)


KNOWN = (
    Replacement("nt_xent", "function", lambda orig: nt_xent, "official MI-UE (hala64/mi-ue)"),
    Replacement("pgd_update_", "function", lambda orig: pgd_update_, "the classic in-place PGD update"),
    Replacement("pgd_update", "function", lambda orig: pgd_update, "the classic out-of-place PGD update"),
    Replacement("SupConLoss", "class", _loss_class, "HobbitLong/SupContrast and its copies"),
    Replacement("SimCLRLoss", "class", _loss_class, "kaiwenzha/contrastive-poisoning (losses.py)"),
    Replacement("PerturbationTool.min_min_attack", "method", lambda orig: _min_min_attack,
                "HanxunH/Unlearnable-Examples (toolbox.py), APBench em_utils.py / rem_utils.py"),
    Replacement("PerturbationTool.min_max_attack", "method", lambda orig: _min_max_attack,
                "HanxunH/Unlearnable-Examples (toolbox.py), APBench em_utils.py / rem_utils.py"),
)
_BY_NAME = {r.name: r for r in KNOWN}


# ----------------------------------------------------------------------------- signatures


def _params(fn, drop_self: bool):
    try:
        ps = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in ps):
        return None  # takes any arguments: nothing to judge by
    if drop_self and ps and ps[0].name == "self":
        ps = ps[1:]
    return [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _signature_problem(original, replacement, kind: str) -> str | None:
    """Why ``replacement`` cannot stand in for ``original`` (None when it can): the original's
    positional parameters must be ours, by name and position, and a parameter ours requires must
    be required there too (``nt_xent(x, y=None, t=0.5)``, the SimCLR pair loss of other codebases,
    is not MI-UE's ``nt_xent(x, y, t=0.1)``). Classes: their ``__init__`` and ``forward``."""
    if kind == "class":
        if not isinstance(original, type):
            return f"is a {type(original).__name__}, not a class"
        pairs = [("__init__", original.__init__, replacement.__init__),
                 ("forward", getattr(original, "forward", None), replacement.forward)]
    elif kind == "method":
        pairs = [("", original, replacement)]
    else:
        if not callable(original) or isinstance(original, type):
            return "is not a function"
        pairs = [("", original, replacement)]
    for what, orig, new in pairs:
        if orig is None:
            return f"has no {what}"
        po, pn = _params(orig, kind != "function"), _params(new, kind != "function")
        if po is None or pn is None:
            continue
        theirs = f"{what}({', '.join(str(p) for p in po)})"
        ours = f"({', '.join(str(p) for p in pn)})"
        if len(po) > len(pn) or [p.name for p in po] != [p.name for p in pn[:len(po)]]:
            return f"takes {theirs}; ours takes {ours}"
        required = lambda ps: [p.name for p in ps if p.default is inspect.Parameter.empty]  # noqa: E731
        if required(pn) != required(po):
            return f"takes {theirs}, ours {ours}: not the same function"
    return None


# ----------------------------------------------------------------------------- patch


class PatchHandle:
    """What :func:`patch` did: ``replaced`` (``(qualified name, codebase)`` pairs), ``skipped``
    (``(name, reason)``); ``undo()`` restores the originals (also on leaving a ``with`` block)."""

    def __init__(self, target, done: list, skipped: list):
        self.target = target
        self._done = done  # (owner, attribute, original, replacement, label, codebase)
        self.replaced = [(label, codebase) for _, _, _, _, label, codebase in done]
        self.skipped = skipped

    @property
    def patched(self) -> list[str]:
        return [label for label, _ in self.replaced]

    def undo(self) -> None:
        for owner, attr, original, _, _, _ in reversed(self._done):
            setattr(owner, attr, original)
        self._done = []

    def report(self) -> str:
        name = getattr(self.target, "__name__", repr(self.target))
        lines = [f"miue.compat: {name}: replaced {len(self.replaced)}"
                 + ("" if self.replaced else " (nothing)")]
        lines += [f"  replaced {label}  ({codebase})" for label, codebase in self.replaced]
        lines += [f"  skipped  {n}: {why}" for n, why in self.skipped]
        return "\n".join(lines)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()
        return False

    def __bool__(self):
        return bool(self.replaced)

    def __repr__(self):
        return f"PatchHandle({getattr(self.target, '__name__', self.target)!r}, patched={self.patched})"


def _lookup(target, name: str):
    """(owner, attribute) where ``name`` lives in ``target``, or None."""
    if "." in name:
        cls_name, meth = name.split(".", 1)
        owner = target if isinstance(target, type) and target.__name__ == cls_name else getattr(target, cls_name, None)
        if isinstance(owner, type) and meth in vars(owner):
            return owner, meth
        return None
    if isinstance(target, type):
        return None
    return (target, name) if hasattr(target, name) else None


def patch(target, names=None, *, strict: bool = False, verbose: bool = False, quiet: bool = False) -> PatchHandle:
    """Replace in ``target`` (a module, or a class for its methods) every known name it defines
    (``names`` limits the search: ``"nt_xent"``, ``"SupConLoss"``, ``"PerturbationTool.min_min_attack"``;
    :data:`KNOWN` lists them). A found object whose signature is not the replacement's is
    skipped and reported. Nothing replaced warns (:class:`PatchWarning`; ``quiet=True`` stays
    silent) or, with ``strict=True``, raises ``LookupError``; ``strict`` also raises when a name
    given in ``names`` is missing or skipped. ``verbose`` prints the report to stderr."""
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in _BY_NAME]
        if unknown:
            raise ValueError(f"no miue.compat replacement for {unknown}; known: {sorted(_BY_NAME)}")
    chosen = [_BY_NAME[n] for n in names] if names is not None else list(KNOWN)
    done, skipped = [], []
    for rep in chosen:
        where = _lookup(target, rep.name)
        if where is None:
            if names is not None:
                skipped.append((rep.name, "not defined here"))
            continue
        owner, attr = where
        original = vars(owner)[attr] if isinstance(owner, type) else getattr(owner, attr)
        if getattr(original, "__miue_compat__", False):
            skipped.append((rep.name, "already replaced by miue.compat"))
            continue
        replacement = rep.make(original)
        problem = _signature_problem(original, replacement, rep.kind)
        if problem:
            skipped.append((rep.name, problem))
            continue
        try:
            replacement.__miue_compat__ = True
        except (AttributeError, TypeError):
            pass
        setattr(owner, attr, replacement)
        done.append((owner, attr, original, replacement, rep.name, rep.codebase))
    handle = PatchHandle(target, done, skipped)
    if verbose:
        print(handle.report(), file=sys.stderr)
    name = getattr(target, "__name__", repr(target))
    if strict and (not done or (names is not None and skipped)):
        handle.undo()
        raise LookupError(f"miue.compat.patch({name}): "
                          + ("nothing replaced" if not done else "not every name replaced")
                          + (f"; skipped: {'; '.join(f'{n}: {w}' for n, w in skipped)}" if skipped else
                             f"; it defines none of {sorted(r.name for r in chosen)}"))
    if not done and not quiet:
        warnings.warn(f"miue.compat.patch({name}) replaced nothing: "
                      + ("; ".join(f"{n}: {w}" for n, w in skipped) if skipped else
                         f"it defines none of {sorted(r.name for r in chosen)}")
                      + " (docs/compat.md says what to change by hand for each codebase)",
                      PatchWarning, stacklevel=2)
    elif skipped and not quiet:
        warnings.warn(f"miue.compat.patch({name}) skipped " + "; ".join(f"{n}: {w}" for n, w in skipped),
                      PatchWarning, stacklevel=2)
    return handle
