"""Hardening (issue 8): interruption, untrusted files, numerics, and random bad input.

* A crafting run killed with SIGKILL at random moments, several times, resumes from its
  checkpoint and ends with exactly the δ of an uninterrupted run.
* SIGINT finishes the round, saves a checkpoint and exits cleanly; resuming gives the same δ.
* A surrogate that starts producing NaN stops the run with a clear error; the last good
  checkpoint stays.
* No room on the disk: the run fails before any work.
* A malicious checkpoint is refused and its payload never runs.
* Hypothesis drives random bad arguments through the public API, and a fixed sweep replaces
  one argument at a time: only a TypeError or ValueError naming the argument comes out, never
  another exception, a crash, a hang or a NaN result; accepted calls return their documented
  result. The library bugs these found are pinned by strict xfails (test_known_bug).
"""

import functools
import inspect
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import miue
from miue._io import ResultFileError
from miue.data import DatasetError, load_dataset

# the cpu presets with one surrogate epoch per round (conftest.py); the spawned crafts below get them as shipped
pytestmark = pytest.mark.usefixtures("epoch_rounds")

CRAFT_SCRIPT = textwrap.dedent("""
    import sys, torch, miue
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (600, 1, 12, 12), dtype=torch.uint8, generator=g)
    y = torch.arange(600) % 4
    r = miue.craft_fast(x, y, preset="cnn", arch="cnn-small", rounds=8, pgd_steps=2, seed=1, progress=False,
                        checkpoint_dir=sys.argv[1] if sys.argv[1] != "-" else None)
    r.save(sys.argv[2])
    print("DONE", flush=True)
""")


def _run_script(tmp_path, ckpt, out, timeout=300):
    script = tmp_path / "craft_script.py"
    script.write_text(CRAFT_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), ckpt, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _reference_delta(tmp_path):
    """The uninterrupted run's result, and how long the whole process took."""
    out = str(tmp_path / "uninterrupted.npz")
    t0 = time.perf_counter()
    p = _run_script(tmp_path, "-", out)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    return miue.CraftResult.load(out), time.perf_counter() - t0


def _wait_for_new_checkpoint(p, path, newer_than, timeout=120):
    """Wait until ``p`` has written ``path`` after ``newer_than`` (or has exited)."""
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        try:
            if os.stat(path).st_mtime_ns > newer_than:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_same_delta(tmp_path):
    ref, seconds = _reference_delta(tmp_path)
    ckpt = str(tmp_path / "ckpt")
    ckpt_file = os.path.join(ckpt, "checkpoint.pt")
    out = str(tmp_path / "resumed.npz")
    rng = random.Random(1234)
    kills = 0
    # The first kill lands anywhere from start-up to mid-run. Each later process is let write
    # one new checkpoint (so the run always advances), then killed at a random moment of the
    # next round, which may fall inside the next checkpoint write. Progress-based rather than
    # purely timed, so a loaded machine cannot make every process finish before its kill.
    for attempt in range(4):
        t_start = time.time_ns()
        p = _run_script(tmp_path, ckpt, out)
        if attempt == 0:
            delay = rng.uniform(0.1, 0.5) * seconds
        else:
            _wait_for_new_checkpoint(p, ckpt_file, t_start)
            delay = rng.uniform(0.0, 0.9) * seconds / 8
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            continue
        assert p.returncode == 0, p.stderr.read()
        break  # this process finished before its kill
    else:
        p = _run_script(tmp_path, ckpt, out)  # after the kills: let it finish
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert kills >= 2, "the run always finished before the kill: make the job longer"
    state_rounds = torch.load(ckpt_file, weights_only=True)["round"]
    assert state_rounds == 8
    res = miue.CraftResult.load(out)
    assert torch.equal(res.delta, ref.delta)
    assert torch.equal(res.images, ref.images)
    rounds = [json.loads(line)["round"] for line in open(os.path.join(ckpt, "metrics.jsonl"))]
    assert rounds == list(range(1, 9))
    print(f"survived {kills} SIGKILLs")


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    ref, _ = _reference_delta(tmp_path)
    ckpt = tmp_path / "ckpt"
    out = str(tmp_path / "after_sigint.npz")
    p = _run_script(tmp_path, str(ckpt), out)
    deadline = time.time() + 120
    while not (ckpt / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    if p.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert "CraftInterrupted" in err and "checkpoint saved" in err
    state = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    assert 1 <= state["round"] < 8
    p = _run_script(tmp_path, str(ckpt), out)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert torch.equal(miue.CraftResult.load(out).delta, ref.delta)


class NaNAfter(torch.nn.Module):
    """Returns (features, logits); features become NaN after ``n`` forward calls."""

    def __init__(self, n):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 4)
        self.calls = 0
        self.n = n

    def forward(self, x):
        self.calls += 1
        f = self.body(x)
        if self.calls > self.n:
            f = f * float("nan")
        return f, self.head(f)


def test_nan_surrogate_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(64) % 4
    calls_per_round = 1 + 1 + 2  # the feature check, one training batch, two PGD steps on one batch
    with pytest.raises(FloatingPointError, match="NaN"):
        miue.craft_fast(x, y, surrogate=NaNAfter(calls_per_round * 2), rounds=5, pgd_steps=2, batch_size=64,
                        train_batch_size=64, checkpoint_dir=str(tmp_path), progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["round"] >= 1 and torch.isfinite(state["delta"]).all()


def test_full_disk_fails_before_work(tmp_path, monkeypatch):
    import shutil

    from miue.craft.engine import Engine

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    started = []
    monkeypatch.setattr(Engine, "train_epoch", lambda self: started.append(1))
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(OSError, match="MiB free"):
        miue.craft_fast(x, torch.arange(32) % 2, preset="cnn", rounds=1, checkpoint_dir=str(tmp_path / "c"),
                        progress=False)
    assert not started


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "ck").mkdir()
    torch.save({"round": 1, "payload": Evil()}, tmp_path / "ck" / "checkpoint.pt")
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ResultFileError, match="cannot load checkpoint"):
        miue.craft_fast(x, torch.arange(32) % 2, preset="cnn", rounds=1, checkpoint_dir=str(tmp_path / "ck"),
                        progress=False)
    assert not marker.exists()


# --------------------------------------------------------------------------- random bad input
#
# The contract (docs/design.md, "Test conventions"): bad input gets a TypeError or ValueError
# (DatasetError and ResultFileError are ValueErrors) whose message names the offending
# argument; never another exception (an IndexError, or a RuntimeError from deep inside torch),
# a crash, a hang or a NaN result. An accepted call returns its documented result (shape,
# dtype, the PGD bounds), finite whenever its inputs are finite: the ops never read their
# inputs' values on the host (no synchronisation), so a NaN or Inf in their inputs may come out
# in their result; craft_fast and evaluate check their inputs on entry.

CLEAR = (TypeError, ValueError)
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


def _randn(shape, dtype, seed, scale):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, dtype=torch.float64, generator=g) * scale).to(dtype)


def random_floats(shape=shapes):
    """Random values of any float dtype, tiny to huge (fp16/bf16 overflow to Inf at 1e20)."""
    return st.builds(_randn, shape, st.sampled_from(FLOAT_DTYPES), st.integers(0, 2**16),
                     st.sampled_from([1e-20, 1.0, 1e20]))


tensors = st.one_of(
    st.builds(lambda s, d: torch.zeros(s, dtype=d), shapes,
              st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool, torch.float16])),
    random_floats(),
    st.just(torch.full((4, 3), float("nan"))),
    st.just(torch.full((4, 3), float("inf"))),
    st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3), st.just([1, 2, 3]),
)
scalars = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.none(), st.text(max_size=2),
                    st.booleans())


def _either(a, b):
    """a or b, half the time each (st.one_of would flatten a one_of and weigh every branch alike)."""
    return st.booleans().flatmap(lambda pick: a if pick else b)


def _fitting(x, kind):
    """Anything at all, or an argument that fits ``x``: labels for its rows (some out of
    range), or a gradient / clean image of its shape; so that some calls are accepted."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return tensors
    if kind == "labels":
        B = x.shape[0]
        lengths = st.sampled_from([B, B, B, B + 1, B - 1] if B else [0, 1])  # sometimes one too many or few
        values = lengths.flatmap(lambda n: st.lists(st.integers(0, 2) | st.integers(-1, 6), min_size=n, max_size=n))
        fit = st.builds(lambda v, d: torch.tensor(v, dtype=torch.int64).to(d), values,
                        st.sampled_from([torch.int32, torch.int64, torch.uint8]))
    elif kind == "grad":
        fit = random_floats(st.just(tuple(x.shape)))
    else:  # clean: uint8 pixels, floats in [0, 1], or any float values
        def pixels(seed):
            return torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))

        def unit(seed, dtype):
            return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)

        fit = st.one_of(st.builds(pixels, st.integers(0, 99)),
                        st.builds(unit, st.integers(0, 99), st.sampled_from(FLOAT_DTYPES)),
                        random_floats(st.just(tuple(x.shape))))
    return _either(fit, tensors)


def _tensors(obj):
    items = obj if isinstance(obj, (tuple, list)) else (obj,)
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _all_finite(objs) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(list(objs)))


def _names_an_argument(message: str, names) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names)


# Library bugs these tests found (issue 39), each pinned by a case of the strict xfail test
# test_known_bug below. A random test lets one through (this exception type and message) only
# where it passes its key in ``known``, under the conditions that trigger it, so the random
# tests keep checking everything else. A fix turns its case into an XPASS failure: delete the
# entry, its case and its ``known`` uses then.
KNOWN_BUGS = {
    # a single image whose feature map is 1×1 trains batch norm on one value: torch's error
    "one-image-batchnorm": (ValueError, r"^Expected more than 1 value per channel when training"),
    # the demo preset's bf16 surrogate on images of 4 pixels or fewer a side diverges
    "tiny-image-bf16-nan": (FloatingPointError, r"the surrogate produced NaN/Inf"),
    # images with a zero-size H, W or C (N > 0): torch's error from deep inside
}
# supcon_loss is NaN below a temperature of about 1e-9 in fp32 (5e-6 fp16, 3e-19 fp64): the
# ops test does not ask for a finite loss below this (test_known_bug case supcon-tiny-temperature)
TINY_TEMPERATURE = 1e-4


def _known_bug(exc, known) -> bool:
    return any(isinstance(exc, KNOWN_BUGS[k][0]) and re.search(KNOWN_BUGS[k][1], str(exc)) for k in known)


def _call(fn, *args, names=None, check=None, allowed=CLEAR, representable=True, known=(), **kwargs):
    """Run ``fn(*args, **kwargs)`` under the contract above. Returns its result, or None if it
    raised one of ``allowed`` (TypeError or ValueError) with a message that names one of
    ``names`` (default: ``fn``'s parameters; none: the call must succeed). ``check(out,
    finite_inputs)`` asserts the documented result of an accepted call; any float tensor it
    returns must be finite when the inputs were (and, by ``representable``, the exact result
    fits the output's dtype). ``known``: keys of KNOWN_BUGS this call may hit."""
    if names is None:
        names = list(inspect.signature(fn).parameters)
    finite_inputs = _all_finite(list(args) + list(kwargs.values()))  # before the call: the PGD ops write in place
    try:
        out = fn(*args, **kwargs)
    except allowed as exc:
        if _known_bug(exc, known):
            return None
        assert _names_an_argument(str(exc), names), (
            f"{getattr(fn, '__name__', fn)}: {type(exc).__name__} names none of the arguments {names}: {exc}"
            if names else f"{getattr(fn, '__name__', fn)}: a valid call raised {type(exc).__name__}: {exc}")
        return None
    except Exception as exc:
        if _known_bug(exc, known):
            return None
        raise AssertionError(f"{getattr(fn, '__name__', fn)} raised {type(exc).__name__}, not one of "
                             f"{[c.__name__ for c in allowed]} naming the argument: {exc}") from exc
    if check is not None:
        check(out, finite_inputs)
    if finite_inputs and representable:
        for t in _tensors(out):
            assert torch.isfinite(t).all(), f"{getattr(fn, '__name__', fn)}: finite inputs gave a non-finite result"
    return out


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _loss_result(f):
    def check(out, finite_inputs):
        assert isinstance(out, torch.Tensor) and out.shape == () and out.dtype == _acc(f.dtype), out
    return check


def _grouped_normalize_result(f, num_classes):
    def check(out, finite_inputs):
        z, inv, class_sum, count = out
        (B, D), C = f.shape, int(num_classes)
        assert z.shape == (B, D) and z.dtype == f.dtype
        assert inv.shape == (B,) and inv.dtype == _acc(f.dtype)
        assert class_sum.shape == (C, D) and class_sum.dtype == _acc(f.dtype)
        assert count.shape == (C,) and count.dtype == torch.int64 and 0 <= int(count.min()) and int(count.sum()) <= B
    return check


def _pgd_result(delta, clean, eps):
    """Returns delta itself, in place; clean + delta in the box [0, 1]; |delta| <= eps where
    clean lies in the box (to the rounding of delta's dtype)."""
    def check(out, finite_inputs):
        assert out is delta, "pgd_linf_step_/project_linf_ must return delta, updated in place"
        if not finite_inputs or not _all_finite([out]):
            return
        c = clean.double() / 255 if clean.dtype == torch.uint8 else clean.double()
        d = out.double()
        tol = 4 * torch.finfo(delta.dtype).eps * (1 + c.abs() + float(eps))
        assert ((c + d >= -tol) & (c + d <= 1 + tol)).all(), "clean + delta leaves the box [0, 1]"
        inside = (c >= 0) & (c <= 1)
        assert (d.abs() <= float(eps) + tol)[inside].all(), f"|delta| exceeds eps={eps}"
    return check


@settings(max_examples=150, deadline=None)
@given(f=_either(random_floats(st.tuples(st.integers(1, 6), st.integers(1, 6))), tensors), data=st.data(),
       t=scalars, e=scalars, c=_either(st.integers(3, 6), scalars))
def test_ops_reject_random_bad_input(f, data, t, e, c):
    y = data.draw(_fitting(f, "labels"), label="labels")
    g = data.draw(_fitting(f, "grad"), label="grad")
    x = data.draw(_fitting(f, "clean"), label="clean")
    tau = t if t is not None else 0.1
    tiny = isinstance(tau, (int, float)) and 0 < tau < TINY_TEMPERATURE
    _call(miue.supcon_loss, f, y, tau, e if e is not None else 1e-8, check=_loss_result(f), representable=not tiny)
    _call(miue.intra_class_cosine_loss, f, y, c, check=_loss_result(f))
    _call(miue.grouped_normalize, f, y, c, check=_grouped_normalize_result(f, c))
    delta = f.clone() if isinstance(f, torch.Tensor) else f
    # a clean image in the box [0, 1] bounds |delta| by 1; far outside it, delta = clamp(clean +
    # delta, 0, 1) - clean may overflow a half-precision delta
    fits = not isinstance(x, torch.Tensor) or x.dtype == torch.uint8 or bool(((x >= 0) & (x <= 1)).all())
    _call(miue.pgd_linf_step_, delta, g, x, t, e, check=_pgd_result(delta, x, e),
          representable=fits)
    delta = f.clone() if isinstance(f, torch.Tensor) else f
    _call(miue.project_linf_, delta, x, e, check=_pgd_result(delta, x, e), representable=fits)


# craft_fast and evaluate: a valid call on a few tiny images, then up to two of its arguments
# replaced by junk; an error must name one of the replaced arguments (and a valid call must pass).
junk = st.one_of(tensors, scalars, st.just(["a", "b"]), st.sampled_from(["x", "paper", "miue", "jpeg"]))


junk_images = st.one_of(  # also: values outside [0, 1], NaN, Inf; a zero-size dimension
    junk,
    st.builds(lambda n, v: torch.full((n, 4, 4), v), st.integers(1, 3),
              st.sampled_from([-0.5, 2.0, math.nan, math.inf])),
    st.builds(lambda s: torch.zeros(s, dtype=torch.uint8), st.tuples(*[st.integers(0, 3)] * 3)),
)
junk_labels = _either(st.one_of(  # half the time: wrong length, negative, float or 2-D
    st.builds(lambda n: torch.arange(n), st.integers(0, 7)),
    st.builds(lambda n: torch.arange(n) - 1, st.integers(1, 6)),
    st.builds(lambda n: torch.arange(n).double(), st.integers(1, 6)),
    st.builds(lambda n: torch.zeros(n, 2, dtype=torch.long), st.integers(1, 6)),
), junk)
JUNK = {"images": junk_images, "train_images": junk_images, "test_images": junk_images, "labels": junk_labels,
        "train_labels": junk_labels, "test_labels": junk_labels}


def _junk_args(names):
    """Which arguments to replace by junk: none (1 in 5), one (3 in 5) or two (1 in 5)."""
    return st.sampled_from([0, 1, 1, 1, 2]).flatmap(
        lambda k: st.lists(st.sampled_from(names), min_size=k, max_size=k, unique=True))


def _images(n, h, w):
    def make(uint8, seed):
        g = torch.Generator().manual_seed(seed)
        if uint8:
            return torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g)
        return torch.rand((n, h, w), generator=g)
    return st.builds(make, st.booleans(), st.integers(0, 99))


def _labels(n):
    def make(k, form):
        y = torch.arange(n) % k
        return {"int64": y, "int32": y.int(), "list": y.tolist(), "numpy": y.numpy()}[form]
    return st.builds(make, st.integers(1, 3), st.sampled_from(["int64", "int32", "list", "numpy"]))


def _known_image_bugs(args, name, junk_args) -> list:
    images, known = args[name], []
    if isinstance(images, torch.Tensor) and images.dim() >= 3 and images.shape[0] == 1:
        known.append("one-image-batchnorm")
    return known


def _with_junk(data, args, junk_args):
    for name in junk_args:
        args[name] = data.draw(JUNK.get(name, junk), label=name)
    return args


CRAFT_ARGS = ("images", "labels", "eps", "rounds", "preset", "objective")


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9),
       junk_args=_junk_args(CRAFT_ARGS))
def test_craft_fast_rejects_random_bad_input(data, n, h, w, junk_args):
    args = _with_junk(data, dict(
        images=data.draw(_images(n, h, w)), labels=data.draw(_labels(n)),
        eps=data.draw(st.sampled_from([8 / 255, 0.1])), rounds=data.draw(st.integers(1, 2)),
        preset=data.draw(st.sampled_from(["demo", "paper", "cnn"])),
        objective=data.draw(st.sampled_from(["miue", "em", "random"]))), junk_args)

    def craft_fast():  # recipe="matched": EM's published recipe would train 10 steps and 20 PGD steps a round
        return miue.craft_fast(**args, recipe="matched", pgd_steps=1, progress=False, arch="cnn-small")

    known = _known_image_bugs(args, "images", junk_args)
    if args["preset"] == "demo" and "images" not in junk_args and min(h, w) <= 4:
        known.append("tiny-image-bf16-nan")
    out = _call(craft_fast, names=junk_args, known=known)
    if out is not None:  # accepted: the documented result (miue/craft/result.py), within the bounds
        images = torch.as_tensor(args["images"])
        n = images.shape[0]
        assert out.delta.dtype == torch.float32 and out.delta.dim() == 4 and out.delta.shape[0] == n
        assert out.images.dtype == torch.uint8 and out.images.shape == out.delta.shape and out.labels.shape == (n,)
        assert torch.isfinite(out.delta).all() and out.delta.abs().max() <= float(args["eps"]) + 1e-7


EVAL_ARGS = ("train_images", "train_labels", "test_images", "test_labels", "epochs", "defense")


@settings(max_examples=50, deadline=None)
@given(data=st.data(), n=st.integers(1, 6), m=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9),
       junk_args=_junk_args(EVAL_ARGS))
def test_evaluate_rejects_random_bad_input(data, n, m, h, w, junk_args):
    args = _with_junk(data, dict(
        train_images=data.draw(_images(n, h, w)), train_labels=data.draw(_labels(n)),
        test_images=data.draw(_images(m, h, w)), test_labels=data.draw(_labels(m)), epochs=1,
        defense=data.draw(st.sampled_from([None, "jpeg", "at"]))), junk_args)
    if args["epochs"] is None:
        args["epochs"] = 1  # None is the preset's 200 epochs: valid, and too long here

    def evaluate():
        return miue.evaluate(**args, arch="cnn-small", progress=False)

    known = _known_image_bugs(args, "train_images", junk_args) + _known_image_bugs(args, "test_images", junk_args)
    out = _call(evaluate, names=junk_args, known=known)
    if out is not None:
        assert math.isfinite(out.test_acc) and 0.0 <= out.test_acc <= 1.0


@settings(max_examples=30, deadline=None)
@given(content=st.binary(max_size=64), suffix=st.sampled_from([".npz", ".pt", ".mat", ".gz", ""]))
def test_loaders_reject_random_files(tmp_path_factory, content, suffix):
    d = tmp_path_factory.mktemp("junk")
    p = d / f"file{suffix}"
    p.write_bytes(content)
    _call(load_dataset, str(p), names=[str(p)], allowed=(DatasetError,))  # the error names the file
    _call(miue.CraftResult.load, str(p), names=[str(p)])


# One bad argument at a time, every other argument valid: a fixed sweep beside the random tests
# (whose few dozen examples may miss a given fault). Each call must raise a TypeError or
# ValueError naming that argument.
_F, _Y = _randn((4, 3), torch.float32, 0, 1.0), torch.arange(4) % 2
_D, _G, _X = torch.zeros(2, 3), torch.randn(2, 3), torch.rand(2, 3)
_IMG = torch.randint(0, 256, (4, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
FAULTS = {  # argument: its bad values, for every function below that takes it
    "features": (_F[:, 0], _F.long(), _F[:, :0], _F[:0], [[1.0, 2.0]]),
    "labels": (_Y[:3], torch.arange(5) % 2, _Y.float(), _Y[:, None], _Y.bool(), _Y.tolist(), _Y - 1, None),
    "num_classes": (0, -1, 1.5, True, None, torch.tensor(2), 1),  # 1: labels go up to 1
    "temperature": (0.0, -0.1, math.nan, math.inf, "x", None, True),
    "delta": (_D.long(), _D.tolist(), None),
    "grad": (_G[:, :2], _G.long(), None, _G.tolist()),
    "clean": (_X[:1], _X.int(), _X.bool(), None),
    "step_size": (math.nan, math.inf, "x", None, torch.ones(2)),
    "eps": (-0.1, math.nan, math.inf, None, torch.tensor([0.1, 0.2]), 0.0, 1.5, "x"),
    "images": (_IMG[0], _IMG[:0], _IMG.float() * 2, _IMG.float() * math.nan, _IMG.tolist()),
    "rounds": (0, 1.5, "x"), "preset": ("x", None, ["paper"]), "objective": ("x", None),
    "train_images": (_IMG[0], _IMG.float() * 2), "train_labels": (_Y[:3], _Y[:, None].repeat(1, 2)),
    "test_images": (_IMG[:, :4], _IMG.float() * math.nan), "test_labels": (_Y[:3],),
    "epochs": (0, 1.5), "defense": ("x",),
}
# the function, a valid call, and the arguments the sweep replaces with FAULTS (VALID_HERE: a
# "bad" value that this function accepts by design)
VALID_CALLS = {
    "supcon_loss": (miue.supcon_loss, dict(features=_F, labels=_Y, temperature=0.1), ("features", "labels",
                                                                                    "temperature")),
    "intra_class_cosine_loss": (miue.intra_class_cosine_loss, dict(features=_F, labels=_Y, num_classes=2),
                                ("features", "labels", "num_classes")),
    "grouped_normalize": (miue.grouped_normalize, dict(features=_F, labels=_Y, num_classes=2),
                          ("features", "labels", "num_classes")),
    "pgd_linf_step_": (miue.pgd_linf_step_, dict(delta=_D, grad=_G, clean=_X, step_size=0.01, eps=0.1),
                       ("delta", "grad", "clean", "step_size", "eps")),
    "project_linf_": (miue.project_linf_, dict(delta=_D, clean=_X, eps=0.1), ("delta", "clean", "eps")),
    "craft_fast": (functools.partial(miue.craft_fast, pgd_steps=1, progress=False, arch="cnn-small"),
                   dict(images=_IMG, labels=_Y, eps=8 / 255, rounds=1, preset="paper", objective="miue"),
                   ("images", "labels", "eps", "rounds", "preset", "objective")),
    "evaluate": (functools.partial(miue.evaluate, arch="cnn-small", progress=False),
                 dict(train_images=_IMG, train_labels=_Y, test_images=_IMG, test_labels=_Y, epochs=1, defense=None),
                 ("train_images", "train_labels", "test_images", "test_labels", "epochs", "defense")),
}
VALID_HERE = {("supcon_loss", "labels"): {6},  # supcon compares labels for equality: negative ones are valid
              ("craft_fast", "labels"): {3, 5},  # craft_fast takes labels as a list, or as an N×1 column
              ("pgd_linf_step_", "eps"): {5, 6}, ("project_linf_", "eps"): {5, 6}}  # a radius of 0 or > 1 too
KNOWN_FAULT_BUGS: dict = {}  # (function, argument, index of the bad value): a KNOWN_BUGS key


def _fault_case(fn, arg, i):
    bug = KNOWN_FAULT_BUGS.get((fn, arg, i))
    marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"KNOWN_BUGS[{bug!r}]")] if bug else []
    return pytest.param(fn, arg, i, id=f"{fn}-{arg}-{i}", marks=marks)


FAULT_CASES = [_fault_case(fn, arg, i) for fn, (_, _, args) in VALID_CALLS.items() for arg in args
               for i in range(len(FAULTS[arg])) if i not in VALID_HERE.get((fn, arg), ())]


@pytest.mark.parametrize("fn,arg,i", FAULT_CASES)
def test_each_bad_argument_is_refused_by_name(fn, arg, i):
    call, valid, _ = VALID_CALLS[fn]
    kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in valid.items()}
    kwargs[arg] = FAULTS[arg][i]

    def run():
        return call(**kwargs)

    run.__name__ = fn
    assert _call(run, names=[arg]) is None, f"{fn} accepted a bad {arg}: {FAULTS[arg][i]!r}"


def _tiny_images(n, h, w):
    return torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _craft(images, labels, **kw):
    def craft_fast():
        return miue.craft_fast(images, labels, **{"preset": "paper", "rounds": 1, "pgd_steps": 1, "arch": "cnn-small",
                                                  "progress": False, **kw})
    return craft_fast


def _evaluate(images, labels, test_images=None, test_labels=None):
    def evaluate():
        return miue.evaluate(images, labels, images if test_images is None else test_images,
                             labels if test_labels is None else test_labels, epochs=1, arch="cnn-small", progress=False)
    return evaluate


def _tiny_image_runs():
    """The divergence does not come on every run of one configuration (it varies with the
    global RNG state and from run to run): try several, stop at the first failure."""
    configs = [(3, 1, 1, "em"), (6, 9, 1, "miue"), (6, 1, 1, "em")]
    for (n, h, w, objective), seed in itertools.product(configs, range(3)):
        _call(_craft(_tiny_images(n, h, w), torch.arange(n) % 3, preset="demo", objective=objective, seed=seed),
              names=["images"])


x9 = _tiny_images(2, 9, 9)
KNOWN_BUG_CASES = {  # a reproducer of each entry of KNOWN_BUGS (and of the two NaN results above)
    "one-image-batchnorm/craft_fast": lambda: _call(_craft(torch.rand(1, 1, 1), [0]), names=["images"]),
    "one-image-batchnorm/evaluate": lambda: _call(_evaluate(_tiny_images(1, 5, 5), [0]), names=["train_images"]),
    "supcon-tiny-temperature": lambda: _call(miue.supcon_loss, _randn((8, 4), torch.float32, 0, 1.0),
                                             torch.arange(8) % 3, 1e-12),
}


@pytest.mark.parametrize("case", sorted(KNOWN_BUG_CASES))
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="library bug found by the strict random-input tests (issue 39): see KNOWN_BUGS")
def test_known_bug(case):
    """Each known bug, reproduced under the contract of _call: the call succeeds (with a finite
    result) or raises a TypeError/ValueError naming the argument. Fails today; once a bug is
    fixed its case XPASSes, which fails (strict): then remove the bug's traces here."""
    KNOWN_BUG_CASES[case]()


@pytest.mark.parametrize("case", ["string-labels", "craft-string-labels", "float-labels", "negative-labels",
                                  "image-shapes"])
def test_evaluate_names_the_argument(case):
    """evaluate's errors name train_labels / test_images (they said "labels" and "test images"
    before; found by the strict random-input test)."""
    calls = {
        "string-labels": (lambda: _evaluate(x9, ["a", "b"], test_labels=[0, 1]), "train_labels"),
        "craft-string-labels": (lambda: _craft(x9, "ab"), "labels"),
        "float-labels": (lambda: _evaluate(x9, torch.tensor([0.0, 1.0]), test_labels=[0, 1]), "train_labels"),
        "negative-labels": (lambda: _evaluate(x9, [0, 1], test_labels=[0, -1]), "test_labels"),
        "image-shapes": (lambda: _evaluate(x9, [0, 1], _tiny_images(2, 8, 8), [0, 1]), "test_images"),
    }
    fn, name = calls[case]
    with pytest.raises((TypeError, ValueError), match=name):
        fn()()


@pytest.mark.xfail(strict=False, raises=AssertionError,
                   reason="KNOWN_BUGS['tiny-image-bf16-nan']: the demo preset's bf16 surrogate diverges on images of "
                          "4 pixels or fewer a side on some runs only (it varies with the global RNG state and run "
                          "order), so this case may pass: not strict, lest CI flip on it")
def test_known_bug_tiny_image_bf16_nan():
    _tiny_image_runs()


@pytest.mark.parametrize("case", ["craft-zero-size", "evaluate-zero-size", "pgd-step-beyond-fp32"])
def test_fixed_bugs_of_the_strict_tests(case):
    """Found by the strict random-input tests (issue 39), fixed: zero-size images and a step size
    beyond float32 are refused by name (they gave torch's RuntimeError and a NaN)."""
    calls = {
        "craft-zero-size": (_craft(torch.zeros(2, 3, 0), [0, 1]), "images"),
        "evaluate-zero-size": (_evaluate(torch.zeros(2, 3, 0, dtype=torch.uint8), [0, 1]), "images"),
        "pgd-step-beyond-fp32": (lambda: miue.pgd_linf_step_(torch.zeros(3), torch.tensor([0.0, 1.0, -1.0]),
                                                             torch.full((3,), 0.5), 1e300, 0.1, backend="cpp"),
                                 "step_size"),
    }
    fn, name = calls[case]
    with pytest.raises(ValueError, match=name):
        fn()
    d = torch.zeros(3, dtype=torch.float64)  # an fp64 delta takes the step in fp64: accepted, finite
    miue.pgd_linf_step_(d, torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64),
                        1e300, 0.1, backend="cpp")
    assert torch.isfinite(d).all()
