"""A crafting run: :func:`craft_fast` checks its arguments, builds the configuration, then
runs the rounds of the engine with checkpoints, resume, interrupt handling and, under
torch.distributed, the final gather of the δ shards.
"""

from __future__ import annotations

import json
import logging

import torch
import torch.nn as nn

from miue import objectives, ops
from miue._amp import precision, resolve_amp
from miue.craft.checkpoint import Checkpoint, check_resumable, fingerprint
from miue.craft.distributed import dist_info, gather_delta, shard
from miue.craft.engine import Engine
from miue.craft.inputs import prepare_inputs
from miue.craft.interrupt import CraftInterrupted, GracefulInterrupt
from miue.craft.result import CraftResult, quantize_images
from miue.presets import TRAINING_FREE, CraftConfig, check_field, make_config

log = logging.getLogger("miue.craft")


def craft_fast(
    images,
    labels=None,
    *,
    eps: float = 8 / 255,
    preset: str = "paper",
    objective: str = objectives.DEFAULT,
    recipe: str = "published",
    surrogate: nn.Module | None = None,
    rounds: int | None = None,
    pgd_steps: int | None = None,
    batch_size: int | None = None,
    train_batch_size: int | None = None,
    device=None,
    backend: str | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    classwise: bool = False,
    num_classes: int | None = None,
    delta_dtype: str | None = None,
    release_rounding: str = "round",
    seed: int = 0,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    extend: bool = False,
    progress: bool = True,
    **options,
) -> CraftResult:
    """Craft unlearnable examples (MI-UE by default) for a labelled image set.

    images: uint8 (0..255) or float (in [0, 1]) numpy array or tensor, N×H×W, N×H×W×C or
        N×C×H×W, any channel count; or a torch Dataset yielding (image, label).
    labels: integer labels (N); optional with a Dataset.
    eps: L∞ budget in [0, 1] units (8/255 by default).
    preset: "paper" (docs/crafting.md exactly), "fast" (paper + bf16/channels_last/compile/CUDA
        graphs on CUDA), "demo" (ResNet-8 surrogate, 50 PGD steps per image, bf16: minutes on
        a CPU), "cpu" (the same surrogate at 200 steps) or "cnn" (a small CNN at 25 steps:
        the cheapest). What each achieved: docs/effectiveness.md.
        See miue/presets.py.
    objective: "miue" (supcon loss), "miue-linear" (intra-class cosine loss), "em"
        (error-minimising cross-entropy), "tap" (targeted adversarial poisoning: a surrogate
        trained on the clean data, then pgd_steps steps towards class y + 1 after the last
        round), "rem" (robust EM: surrogate trained adversarially with radius rem_eps = eps/2,
        δ minimising the loss at the worst ρ), "random" (uniform noise, no model), or a
        training-free shortcut from miue.shortcuts: "ar" (autoregressive noise), "lsp"
        (linear-separable patches) or "ops" (one-pixel shortcut: an L0 attack, ignores eps).
    recipe: "published" (default): em, tap, rem and pil craft with their authors' published
        recipe (schedule, step sizes, initialisation, augmentation, stop rule, optimiser), on
        the preset's surrogate architecture and speed options; "matched": the objective's
        loss on the preset's own (MI-UE's) schedule, a loss-only ablation. miue and random
        are the same under both. See miue/objectives.py and docs/crafting.md.
    surrogate: an nn.Module returning logits (features = the input of its last nn.Linear)
        or (features, logits); a copy is trained. Default: the preset's architecture.
    rounds, pgd_steps, batch_size (PGD batch), train_batch_size, amp, channels_last, compile,
        cuda_graphs, delta_dtype ("float32" | "float16" | "int8"): override the preset.
    Other keyword options override CraftConfig fields (lr, temperature, alpha_start, ...).
    checkpoint_dir: write a checkpoint every ``checkpoint_every`` rounds (atomically) and
        per-round metrics (metrics.jsonl); calling again with the same directory resumes.
    extend: with a checkpoint of a run with fewer rounds, continue it to ``rounds`` instead of
        refusing it: the α and learning-rate schedules follow the new total from the
        checkpoint's round on, and ``result.config["schedule_changes"]`` records where.
    """
    # every crafting setting is checked once, where the configuration is made (CraftConfig.check);
    # here only what is not configuration: the batch size's two names, extend, the device, the data
    if "pgd_batch_size" in options:  # the CraftConfig field behind batch_size: accepted under either name
        if batch_size is not None:
            raise TypeError("give the PGD batch once: batch_size or pgd_batch_size, not both")
        batch_size = options.pop("pgd_batch_size")
    if not isinstance(extend, bool):
        raise TypeError(f"extend must be True or False, got {extend!r}")
    for name, value in (("eps", eps), ("objective", objective), ("recipe", recipe), ("classwise", classwise),
                        ("release_rounding", release_rounding), ("seed", seed), ("checkpoint_every", checkpoint_every)):
        if value is None:  # make_config reads None as "the preset's value"; these arguments have no such default
            check_field(name, value)
    cfg = make_config(
        preset, objective=objective, recipe=recipe, eps=eps, rounds=rounds, pgd_steps=pgd_steps, pgd_batch_size=batch_size,
        train_batch_size=train_batch_size, amp=amp, channels_last=channels_last, compile=compile,
        cuda_graphs=cuda_graphs, classwise=classwise, delta_dtype=delta_dtype, release_rounding=release_rounding,
        seed=seed, backend=backend, checkpoint_every=checkpoint_every, num_classes=num_classes or 0, **options,
    )
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clean, y, cfg.num_classes = prepare_inputs(images, labels, num_classes)
    if device.type != "cuda":  # CUDA graphs are CUDA-only (channels_last helps oneDNN too)
        cfg.cuda_graphs = False
    # bf16 autocast: on CUDA, and on CPUs with native bf16 (AMX / avx512_bf16); else fp32, logged once
    ran = precision(cfg.amp, device)  # recorded with the result: the precision that ran, and why
    cfg.amp = resolve_amp(cfg.amp, device)
    if cfg.objective in TRAINING_FREE:
        if cfg.classwise:
            raise ValueError(f"objective={cfg.objective!r} is class-structured already; classwise=True does not apply")
        return _training_free(cfg, clean, y, ran)
    if cfg.classwise and dist_info()[1] > 1 and objectives.get(cfg.objective).surrogate != "none":
        raise ValueError("classwise crafting is not supported under torch.distributed (class perturbations would "
                         "need a collective per PGD step); run it in one process")
    return _run(cfg, clean, y, surrogate, device, checkpoint_dir, progress, extend, ran)


def _training_free(cfg: CraftConfig, clean: torch.Tensor, y: torch.Tensor, ran: dict) -> CraftResult:
    """A training-free objective: its record's generator gives δ, the released images and what the
    configuration records (seconds, no rounds, the same result in every process of a distributed
    run; miue/objectives.py)."""
    delta, images, extra = objectives.get(cfg.objective).generator(cfg, clean, y)
    config = {**cfg.to_dict(), **extra, "precision": "fp32"}
    return CraftResult(delta=delta, images=images, labels=y, history=[{"round": 1, "objective": cfg.objective}],
                       config=config)


def _run(cfg: CraftConfig, clean, y, surrogate, device, checkpoint_dir, progress, extend=False,
         ran: dict | None = None) -> CraftResult:
    rank, world = dist_info()
    n_global = clean.shape[0]
    owned = shard(n_global, rank, world)
    inputs = fingerprint(clean, y) + (f"-rank{rank}of{world}" if world > 1 else "")
    ckpt = Checkpoint(checkpoint_dir, rank, world) if checkpoint_dir is not None else None
    local_clean, local_y = (clean[owned], y[owned]) if world > 1 else (clean, y)
    if cfg.storage == "disk":
        if checkpoint_dir is None:
            raise ValueError("storage='disk' keeps δ in a memory-mapped file beside the checkpoints: pass checkpoint_dir")
        if world > 1:
            raise ValueError("storage='disk' is for one process; under torch.distributed use 'host' or 'auto'")
    eng = Engine(cfg, local_clean, local_y, surrogate, device, progress and rank == 0, rank, world, n_global,
                 delta_dir=ckpt.directory if ckpt is not None else None)
    if ckpt is not None:  # each checkpoint holds δ and the surrogate with its optimiser state
        params = sum(p.numel() * p.element_size() for p in eng.model.parameters()) if eng.model is not None else 0
        delta = eng.class_delta_dev if cfg.classwise else eng.store.delta
        ckpt.check_space(delta.numel() * delta.element_size() + 3 * params)
    start_round, history, changes = 0, [], []
    st = ckpt.load() if ckpt is not None else None
    if st is not None:
        changes = check_resumable(st, cfg, inputs, ckpt.path, extend)
        start_round, history = eng.load_state(st)
        if json.loads(st["config"])["rounds"] < cfg.rounds:  # extend=True: the schedule changes here
            eng.extend_schedule()
        log.info("resuming from %s after round %d", ckpt.path, start_round)
    if ckpt is not None:  # one line per round in the checkpoint: drop rounds logged after it
        ckpt.write_metrics(history)

    def save(round_done):
        if ckpt is None:
            return
        state = eng.state(round_done, history)
        state["config"] = json.dumps(cfg.to_dict())
        state["fingerprint"] = inputs
        state["schedule_changes"] = json.dumps(changes)
        ckpt.save(state)

    if eng.obj.surrogate == "none":  # random noise: no model, no rounds
        if start_round == 0:
            eng.random_noise(owned, n_global)
            history.append({"round": 1, "objective": cfg.objective})
            save(cfg.rounds)
    else:
        _rounds(eng, cfg, start_round, history, save, ckpt, progress and rank == 0)

    if cfg.storage == "disk" and not cfg.classwise:
        delta, images_out = _finish_on_disk(eng.store, clean, cfg, ckpt.directory)
    elif cfg.classwise:
        delta = eng.class_delta_dev.cpu()[y].clamp_(-cfg.eps, cfg.eps)
    else:
        delta = eng.store.delta_full()
        if world > 1:
            delta = gather_delta(delta, n_global, world)
        # PGD kept δ in the box around the flipped image it saw last; the result is projected
        # around the image as given (the released images are the same either way), then
        # clamped exactly to ±ε ((c + δ) - c may round a few ulps past ε)
        ops.project_linf_(delta, clean, cfg.eps).clamp_(-cfg.eps, cfg.eps)
    if not (cfg.storage == "disk" and not cfg.classwise):
        images_out = quantize_images(clean, delta, cfg.eps, cfg.release_rounding)
    config = {**cfg.to_dict(), **(ran or {})}
    if cfg.cuda_graphs:  # asked for: say what ran ("captured", "failed (...)" or "not used")
        config["cuda_graphs_status"] = eng.graph_status or "not used (no full PGD batch, or a step that cannot be captured)"
    if cfg.stop_eval_acc > 0 and history and not history[-1].get("stopped"):
        config["stop"] = "cap"  # the cap on rounds came before the published stop rule
    elif history and history[-1].get("stopped"):
        config["stop"] = history[-1].get("stop", "stopped")
    if world > 1:
        config["world_size"] = world
    if changes:
        config["schedule_changes"] = changes
    return CraftResult(delta=delta, images=images_out, labels=y, history=history, config=config)


def _finish_on_disk(store, clean: torch.Tensor, cfg: CraftConfig, directory: str, rows: int = 2048):
    """The final projection and release of a ``storage="disk"`` run in chunks of ``rows`` images,
    into memory-mapped files ``result-delta.f32`` and ``result-images.u8`` of ``directory``: host
    memory stays flat in N."""
    import os

    from miue.craft.store import file_tensor

    n, shape = clean.shape[0], tuple(clean.shape[1:])
    delta = file_tensor(os.path.join(directory, "result-delta.f32"), (n,) + shape, torch.float32, fresh=True)
    images = file_tensor(os.path.join(directory, "result-images.u8"), (n,) + shape, torch.uint8, fresh=True)
    for s in range(0, n, rows):
        idx = torch.arange(s, min(s + rows, n))
        d = store.delta_batch(idx).cpu().float()
        c = clean[s:s + rows]
        ops.project_linf_(d, c, cfg.eps).clamp_(-cfg.eps, cfg.eps)
        delta[s:s + rows] = d
        images[s:s + rows] = quantize_images(c, d, cfg.eps, cfg.release_rounding)
    return delta, images


def _rounds(eng: Engine, cfg: CraftConfig, start_round: int, history: list, save, ckpt: Checkpoint | None,
            progress: bool):
    """Rounds start_round + 1 .. cfg.rounds of the engine, with metrics, checkpoints, the
    progress bar and Ctrl-C handling (finish the round, checkpoint, raise CraftInterrupted)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.rounds, initial=start_round, desc=f"miue craft ({cfg.objective})", unit="round",
               disable=not progress, dynamic_ncols=True)
    interrupt = GracefulInterrupt(enabled=ckpt is not None)
    saved = start_round
    try:
        with interrupt:
            first = cfg.rounds + 1 if history and history[-1].get("stopped") else start_round + 1
            for e in range(first, cfg.rounds + 1):
                try:
                    rec = eng.run_round(e)
                except FloatingPointError as exc:
                    raise FloatingPointError(f"{exc}; stopped, the last good checkpoint (round {saved}) is kept") from None
                history.append(rec)
                log.info("round %d/%d: %s", e, cfg.rounds, rec)
                if ckpt is not None:
                    ckpt.append_metrics(rec)
                stopped = rec.get("stopped", False)
                if e % cfg.checkpoint_every == 0 or e == cfg.rounds or interrupt.requested or stopped:
                    save(e)
                    saved = e
                if stopped:
                    bar.update(cfg.rounds - e + 1)
                    break
                if "objective_loss" in rec:  # (TAP's training-only rounds have no PGD pass)
                    bar.set_postfix(loss=f"{rec['objective_loss']:.4f}", acc=f"{rec['train_acc']:.3f}",
                                    **({"img_s": f"{rec['pgd_images_per_s']:.0f}"} if "pgd_images_per_s" in rec else {}))
                bar.update(1)
                if interrupt.requested and e < cfg.rounds:
                    raise CraftInterrupted(
                        f"crafting interrupted after round {e}/{cfg.rounds}; checkpoint saved in {ckpt.directory} "
                        "(call again with the same checkpoint_dir to resume)", e, ckpt.directory)
    finally:
        bar.close()
