"""Checkpoint and resume: one process's files in ``checkpoint_dir``.

``checkpoint.pt`` holds the surrogate, its optimiser and scheduler, δ, the generator state,
the history, the configuration and a fingerprint of the inputs; it is replaced atomically
after every ``checkpoint_every`` rounds. ``metrics.jsonl`` has one line per round. Under
torch.distributed each rank writes to ``checkpoint_dir/rank<r>-of-<W>/`` and keeps the
previous checkpoint (``.prev``), so that the ranks can agree on a round they all saved.

A checkpoint is resumed only by a run with the same inputs and the same values of
:data:`CHECKED_KEYS`, except ``rounds`` with ``extend=True``: the run then continues to the
new number of rounds and records the schedule change (:func:`check_resumable`).
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from miue import objectives
from miue._io import atomic_save, atomic_write, check_writable, load_checkpoint, storage_errors
from miue.craft.distributed import agree_min
from miue.presets import CraftConfig

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"

CHECKED_KEYS = ("objective", "eps", "rounds", "pgd_steps", "pgd_batch_size", "train_batch_size", "arch", "seed",
                "classwise", "temperature", "alpha_start", "alpha_end", "lr", "delta_dtype", "num_classes", "flip",
                "train_steps", "train_epochs", "stop_train_acc", "pgd_bn", "rem_eps", "rem_steps", "recipe",
                "rem_step_size", "schedule", "train_order", "train_augment", "attack_augment", "lr_schedule",
                "lr_milestones", "lr_gamma", "lr_step_every", "nesterov", "grad_clip", "stop_eval_acc", "input_norm",
                "delta_init", "restarts", "eot_samples", "pil_lambda", "weight_decay", "momentum", "lr_min")


def fingerprint(clean: torch.Tensor, labels: torch.Tensor) -> str:
    """Identifies the inputs of a checkpoint: all images up to 512 MiB, else every k-th one."""
    h = hashlib.sha256()
    h.update(str(tuple(clean.shape)).encode() + str(clean.dtype).encode())
    h.update(labels.numpy().tobytes())
    flat = clean.reshape(clean.shape[0], -1)
    step = max(1, -(-clean.numel() * clean.element_size() // 2**29))
    rows = flat[::step]
    chunk = max(1, 2**24 // max(1, rows.shape[1] * rows.element_size()))
    for s in range(0, rows.shape[0], chunk):  # in chunks: the images may be a large memory-mapped cache
        h.update(rows[s:s + chunk].contiguous().numpy())
    return h.hexdigest()[:16]


def check_resumable(state: dict, cfg: CraftConfig, inputs: str, path: str, extend: bool = False) -> list[dict]:
    """Refuse a checkpoint from another run; returns the run's schedule changes.

    ``inputs`` is the fingerprint of this run's inputs. With ``extend``, a checkpoint of a run
    with fewer rounds is accepted: a change {"round": r, "rounds_before": E0, "rounds_after": E}
    is appended to the ones the checkpoint carries (r: the checkpoint's round)."""
    # keys added since: their defaults; a checkpoint from before recipes ran the preset's schedule
    saved = {**CraftConfig().to_dict(), "recipe": "matched", **json.loads(state["config"])}
    saved = json.loads(json.dumps(saved))
    now = json.loads(json.dumps(cfg.to_dict()))  # (tuples as JSON lists, as the checkpoint holds them)
    if objectives.get(cfg.objective).published is None:  # both recipes are the preset's schedule
        saved["recipe"] = now["recipe"]
    keys = [k for k in CHECKED_KEYS if not (extend and k == "rounds")]
    diffs = [k for k in keys if saved.get(k) != now.get(k)]
    if diffs or state.get("fingerprint") != inputs:
        what = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in diffs)
        hint = " (pass extend=True to continue it to the new number of rounds)" if diffs == ["rounds"] else ""
        raise ValueError(f"checkpoint {path} comes from an incompatible run ({what or 'different images or labels'})"
                         f"{hint}; use another checkpoint_dir or delete it")
    changes = json.loads(state.get("schedule_changes", "[]"))
    if saved["rounds"] > cfg.rounds:
        raise ValueError(f"extend=True continues a run to more rounds, but the checkpoint {path} has rounds="
                         f"{saved['rounds']} and this call rounds={cfg.rounds}")
    if saved["rounds"] < cfg.rounds:
        changes.append({"round": int(state["round"]), "rounds_before": saved["rounds"], "rounds_after": cfg.rounds})
    return changes


class Checkpoint:
    """The checkpoint and metrics files of one process (rank ``rank`` of ``world``)."""

    def __init__(self, directory: str, rank: int = 0, world: int = 1):
        if world > 1:
            directory = os.path.join(directory, f"rank{rank}-of-{world}")
        check_writable(directory, what="the checkpoint folder")
        self.directory, self.world = directory, world
        self.state_bytes = 0
        self.path = os.path.join(directory, CHECKPOINT_NAME)
        self.metrics_path = os.path.join(directory, METRICS_NAME)

    def check_space(self, state_bytes: int) -> None:
        """Fail now, not after hours: room for two checkpoints (the next one's temporary file
        beside the last) of ``state_bytes`` each."""
        self.state_bytes = state_bytes
        check_writable(self.directory, min_free_bytes=2 * state_bytes + 2**24, what="the checkpoint folder")

    def load(self) -> dict | None:
        """The newest state all ranks have (None: start afresh). With several ranks a kill during
        a save can leave one rank a round ahead, so each keeps its previous checkpoint and the
        ranks agree on the oldest round (one all_reduce)."""
        candidates = [p for p in (self.path, self.path + ".prev") if os.path.exists(p)]
        states = [load_checkpoint(p) for p in candidates]
        if self.world == 1:
            return states[0] if states else None
        agreed = agree_min(states[0]["round"] if states else -1)
        if agreed < 0:
            return None
        for st in states:
            if st["round"] == agreed:
                return st
        raise ValueError(f"checkpoint {self.path}: no state for round {agreed} that the other ranks agreed on")

    def save(self, state: dict) -> None:
        with storage_errors(self.directory, 2 * self.state_bytes + 2**24, "the checkpoint"):
            if self.world > 1 and os.path.exists(self.path):
                os.replace(self.path, self.path + ".prev")
            atomic_save(state, self.path)

    def write_metrics(self, history: list) -> None:
        """metrics.jsonl as one line per round of ``history`` (drops rounds logged after the
        checkpoint that is being resumed)."""
        def write(tmp):
            with open(tmp, "w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in history)

        atomic_write(self.metrics_path, write)

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
