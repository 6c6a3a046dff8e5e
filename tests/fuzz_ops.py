"""Fuzz every op of the C++ CPU backend with random sizes, strides, dtypes and label values
(huge and negative labels with validation off). Run by tests/asan.sh under AddressSanitizer,
which turns any out-of-bounds access into a crash. The script itself checks, and exits
non-zero (listing every mismatch) unless:

* the losses and their gradients are finite and grouped_normalize's class counts equal the
  reference's (in-range labels only);
* pgd_linf_step_ and project_linf_ equal the reference backend bitwise (tolerance 0: SPEC §2.4
  makes every backend bitwise equal to the fp32 formula, fp64 for an fp64 delta);
* every compiled op called directly with inconsistent arguments raises an error whose message
  names the offending argument (TORCH_CHECK's RuntimeError), rather than running.

    python tests/fuzz_ops.py --iterations 300 [--seed 0]
"""

import argparse
import random
import re
import sys

import torch

import miue
from miue.ops import reference as R

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def rand_features(rng, g):
    B, D = rng.randint(1, 300), rng.randint(1, 300)
    dt = rng.choice(DTYPES)
    layout = rng.choice(["contiguous", "transposed", "strided", "offset"])
    f = torch.randn(B, D, generator=g, dtype=torch.float64)
    if rng.random() < 0.3:
        f[rng.randrange(B)] = 0  # a null row
    f = f.to(dt)
    if layout == "transposed":
        f = f.T.contiguous().T
    elif layout == "strided":
        wide = torch.zeros(B, 3 * D, dtype=dt)
        wide[:, ::3] = f
        f = wide[:, ::3]
    elif layout == "offset":
        big = torch.zeros(B + 2, D + 1, dtype=dt)
        big[1:-1, 1:] = f
        f = big[1:-1, 1:]
    return f


def rand_labels(rng, g, B, C, wild):
    y = torch.randint(0, C, (B,), generator=g)
    if wild:
        bad = torch.tensor([-1, C, 2**31 - 1, -(2**31), 2**40, -(2**40)])
        mask = torch.rand(B, generator=g) < 0.3
        y = torch.where(mask, bad[torch.randint(0, len(bad), (B,), generator=g)], y)
    return y.to(rng.choice([torch.int32, torch.int64])) if not wild else y


def one(rng, g, stats, failures):
    f = rand_features(rng, g)
    B = f.shape[0]
    C = rng.randint(1, 50)
    wild = rng.random() < 0.5
    y = rand_labels(rng, g, B, C, wild)
    if y.dtype == torch.int64 and y.abs().max() < 2**31 and rng.random() < 0.5:
        y = y.to(torch.int32)
    x = f.clone().requires_grad_(True)
    # supcon: labels are compared for equality only, any values are valid
    loss = miue.supcon_loss(x, y, rng.choice([0.05, 0.1, 1.0]), backend="cpp")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x.grad = None
    loss = miue.intra_class_cosine_loss(x, y, C, backend="cpp", validate=False)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    z, inv, s, n = miue.grouped_normalize(f, y, C, backend="cpp", validate=False)
    keep = (y >= 0) & (y < C)
    ref_n = R.grouped_normalize(f.double()[keep], y[keep].long(), C)[3]
    assert torch.equal(n, ref_n), (n, ref_n)
    stats["loss ops"] += 1

    # PGD: random shapes and layouts, uint8 or float clean, any float dtypes
    shape = tuple(rng.randint(1, 9) for _ in range(rng.randint(1, 4)))
    ddt, gdt = rng.choice(DTYPES), rng.choice(DTYPES)
    delta = ((torch.rand(shape, generator=g) - 0.5) * 0.1).to(ddt)
    grad = torch.randn(shape, generator=g).to(gdt)
    clean = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) if rng.random() < 0.5 else torch.rand(shape, generator=g).to(rng.choice(DTYPES))
    if len(shape) == 4 and rng.random() < 0.5:
        delta = delta.contiguous(memory_format=torch.channels_last)
    if delta.dim() >= 2 and rng.random() < 0.3:
        delta = delta.transpose(0, -1)
        grad, clean = grad.transpose(0, -1), clean.transpose(0, -1)
    where = f"shape {shape}, delta {delta.dtype} strides {delta.stride()}, grad {gdt}, clean {clean.dtype}"
    step, eps = rng.uniform(-0.05, 0.05), rng.uniform(0, 0.1)
    expected = delta.clone()  # clone keeps the layout
    miue.pgd_linf_step_(delta, grad, clean, step, eps, backend="cpp")
    miue.pgd_linf_step_(expected, grad, clean, step, eps, backend="reference")
    compare_bitwise(delta, expected, f"pgd_linf_step_(step_size={step!r}, eps={eps!r}), {where}", failures)
    eps = rng.uniform(0, 0.1)
    expected = delta.clone()
    miue.project_linf_(delta, clean, eps, backend="cpp")
    miue.project_linf_(expected, clean, eps, backend="reference")
    compare_bitwise(delta, expected, f"project_linf_(eps={eps!r}), {where}", failures)
    assert torch.isfinite(delta.float()).all()
    stats["pgd ops"] += 1

    # the compiled ops called directly with inconsistent arguments must raise, naming the
    # argument, before they touch memory (under ASan an access out of bounds aborts first)
    ops = torch.ops.miue_C
    f32, ones = f.float(), torch.ones
    t64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # one dense layout for the PGD calls (the raw ops refuse mixed layouts first): one fault each
    dc, gc, cc = delta.contiguous(), grad.contiguous(), clean.contiguous()
    short_grad = (gc[..., :1] if gc.shape[-1] > 1 else torch.cat([gc, gc], -1)).contiguous()
    short_n = n[:-1] if C > 1 else n.repeat(2)
    bad_calls = [  # (the argument the error must name, the call)
        ("labels", lambda: ops.supcon_fwd(f, y[:-1] if B > 1 else y.repeat(2), 0.1, 1e-8)),
        ("features", lambda: ops.supcon_fwd(f[:, 0], y, 0.1, 1e-8)),
        ("labels", lambda: ops.grouped_normalize(f, y.float(), C)),
        ("num_classes", lambda: ops.grouped_normalize(f, y, 0)),
        ("features", lambda: ops.intra_class_fwd(f[None], y, C)),
        ("inv_norm", lambda: ops.intra_class_bwd(ones(()), f32, ones(B + 1), s, n, y)),
        (("class_sum", "class_count"), lambda: ops.intra_class_bwd(ones(()), f32, ones(B), s, short_n, y)),
        ("P", lambda: ops.supcon_bwd(ones(()), f32, ones(B), ones(B + 3), ones(B), y, 0.1)),
        ("N", lambda: ops.supcon_bwd(ones(()), f32, ones(B), ones(B), ones(B + 1), y, 0.1)),
        ("grad", lambda: ops.pgd_linf_step_(dc, short_grad, cc, t64(0.1), t64(0.1), 0.0, 1.0)),
        ("clean", lambda: ops.pgd_linf_step_(dc, gc, cc.int(), t64(0.1), t64(0.1), 0.0, 1.0)),
        ("step_size", lambda: ops.pgd_linf_step_(dc, gc, cc, torch.ones(2, dtype=torch.float64), t64(0.1), 0.0, 1.0)),
        ("eps", lambda: ops.project_linf_(dc, cc, torch.ones(3, dtype=torch.float64), 0.0, 1.0)),
    ]
    for names, call in bad_calls:
        expect_error(call, (names,) if isinstance(names, str) else names, failures)
        stats["bad calls"] += 1


def compare_bitwise(out, expected, what, failures):
    if not torch.equal(out, expected):
        diff = (out.double() - expected.double()).abs()
        bad = int((out != expected).sum())
        failures.append(f"{what}: {bad} of {out.numel()} elements differ from the reference, "
                        f"max |diff| {diff.max().item():.3g}")


def expect_error(call, names, failures):
    """``call`` must raise a RuntimeError (TORCH_CHECK), ValueError or TypeError whose message
    names one of ``names``."""
    where = f"{call.__code__.co_filename}:{call.__code__.co_firstlineno}"
    try:
        call()
    except (RuntimeError, ValueError, TypeError) as exc:
        msg = str(exc).split("\n")[0]
        if not any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", msg) for n in names):
            failures.append(f"bad call at {where}: the error names none of {list(names)}: {type(exc).__name__}: {msg}")
        return
    failures.append(f"bad call at {where}: accepted (no error); it must name {list(names)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    assert "cpp" in miue.available_backends(), "the compiled extension is not loaded"
    print(f"fuzzing the cpp backend from {miue.__file__}")
    rng = random.Random(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    stats = {"loss ops": 0, "pgd ops": 0, "bad calls": 0}
    failures = []
    for i in range(args.iterations):
        before = len(failures)
        one(rng, g, stats, failures)
        failures[before:] = [f"iteration {i}: {m}" for m in failures[before:]]
    if failures:
        print(f"fuzz FAILED: {len(failures)} mismatch(es) (seed {args.seed}); {stats}", file=sys.stderr)
        for m in failures[:50]:
            print("  " + m, file=sys.stderr)
        return 1
    print("fuzz ok:", stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
