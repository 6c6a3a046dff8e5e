"""Fuzz every op of the C++ CPU backend with random sizes, strides, dtypes and label values
(huge and negative labels with validation off). Run by tests/asan.sh under AddressSanitizer,
which turns any out-of-bounds access into a crash; the script itself also checks results
against the reference where they are defined.

    python tests/fuzz_ops.py --iterations 300 [--seed 0]
"""

import argparse
import random
import sys

import torch

import miue
from miue import reference as R

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


def one(rng, g, stats):
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
    before = delta.clone()
    miue.pgd_linf_step_(delta, grad, clean, rng.uniform(-0.05, 0.05), rng.uniform(0, 0.1), backend="cpp")
    expected = before.clone()
    miue.pgd_linf_step_(expected, grad, clean, 0.0, 1.0, backend="reference")  # just to exercise; values differ
    miue.project_linf_(delta, clean, rng.uniform(0, 0.1), backend="cpp")
    assert torch.isfinite(delta.float()).all()
    stats["pgd ops"] += 1

    # the compiled ops called directly with inconsistent arguments must raise, not crash
    ops = torch.ops.miue_C
    bad_calls = [
        lambda: ops.supcon_fwd(f, y[:-1] if B > 1 else y.repeat(2), 0.1, 1e-8),
        lambda: ops.grouped_normalize(f, y.float(), C),
        lambda: ops.intra_class_bwd(torch.ones(()), f.float(), torch.ones(B + 1), s, n, y),
        lambda: ops.pgd_linf_step_(delta, grad[..., :1] if grad.shape[-1] > 1 else grad.repeat(2), clean, torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64), 0.0, 1.0),
        lambda: ops.supcon_bwd(torch.ones(()), f.float(), torch.ones(B), torch.ones(B + 3), torch.ones(B), y, 0.1),
    ]
    for call in bad_calls:
        try:
            call()
        except RuntimeError:
            stats["rejected bad calls"] += 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    assert "cpp" in miue.available_backends(), "the compiled extension is not loaded"
    print(f"fuzzing the cpp backend from {miue.__file__}")
    rng = random.Random(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    stats = {"loss ops": 0, "pgd ops": 0, "rejected bad calls": 0}
    for _ in range(args.iterations):
        one(rng, g, stats)
    print("fuzz ok:", stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
