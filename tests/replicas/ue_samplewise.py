"""Replica of Unlearnable-Examples' sample-wise EM loop (perturbation.py
``sample_wise_perturbation``), written from reading it. Zero-initialised noise; repeat: the model
takes ``train_step`` SGD steps on x + noise (no box; lr 0.1, momentum 0.9, weight decay 5e-4,
gradient norm clipped at 5), then, in eval mode with frozen weights, ``min_min_attack`` runs over
every batch (512 images, the authors' loader) and the returned (unboxed) eta is stored; stop once accuracy on x + noise passes the
threshold, or after ``--rounds``.

    python ue_samplewise.py --out noise.pt [--n 512 --rounds 2 ...]
    python -m miue.compat ue_samplewise.py --out noise.pt      # the same, accelerated
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ue_toolbox  # noqa: E402
from _data import SmallResNet, make_images  # noqa: E402


def run(n=1024, size=32, rounds=2, train_step=10, num_steps=20, batch=512, width=16, seed=0, stop_acc=0.99,
        threads=None):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = make_images(n, size, seed=seed)
    model = SmallResNet(width)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    tool = ue_toolbox.PerturbationTool(epsilon=8 / 255, num_steps=num_steps, step_size=0.8 / 255)
    noise = torch.zeros_like(images)
    idx = torch.arange(n)
    for _ in range(rounds):
        model.train()
        for p in model.parameters():
            p.requires_grad = True
        g = torch.Generator().manual_seed(seed)
        order = idx[torch.randperm(n, generator=g)]
        for step in range(train_step):
            b = order[(step * batch) % n:(step * batch) % n + batch]
            optimizer.zero_grad()
            loss = criterion(model(images[b] + noise[b]), labels[b])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        model.eval()
        for p in model.parameters():
            p.requires_grad = False
        for i0 in range(0, n, batch):
            x, y = images[i0:i0 + batch], labels[i0:i0 + batch]
            _, eta = tool.min_min_attack(x, y, model, optimizer, criterion, random_noise=noise[i0:i0 + batch].clone())
            noise[i0:i0 + batch] = eta.detach().clone()
        with torch.no_grad():
            acc = (model(images + noise).argmax(1) == labels).float().mean().item()
        if acc > stop_acc:
            break
    return noise


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch", type=int, default=512, help="the authors' loader batch (512)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    noise = run(a.n, a.size, a.rounds, num_steps=a.num_steps, batch=a.batch, width=a.width,
                threads=a.threads or None)
    seconds = time.perf_counter() - t0
    torch.save({"noise": noise, "seconds": seconds}, a.out)
    print(f"ue_samplewise: {seconds:.2f} s")


if __name__ == "__main__":
    main()
