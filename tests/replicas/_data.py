"""Generated class-structured images for the replicas (no downloads): a smooth template per
class plus per-image noise, in [0, 1]."""

import torch


def make_images(n: int, size: int = 32, channels: int = 3, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(classes, channels, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.arange(n) % classes
    x = templates[labels] + 0.15 * torch.randn(n, channels, size, size, generator=g)
    return x.clamp(0, 1), labels


class SmallResNet(torch.nn.Module):
    """A narrow CIFAR-stem ResNet (the codebases use ResNet-18; narrower here for CPU tests)."""

    def __init__(self, width: int = 16, classes: int = 10, channels: int = 3):
        super().__init__()
        w = width
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(channels, w, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(w),
                                        torch.nn.ReLU())
        self.block1 = self._block(w, w, 1)
        self.block2 = self._block(w, 2 * w, 2)
        self.short2 = torch.nn.Sequential(torch.nn.Conv2d(w, 2 * w, 1, 2, bias=False), torch.nn.BatchNorm2d(2 * w))
        self.head = torch.nn.Linear(2 * w, classes)

    @staticmethod
    def _block(i, o, s):
        return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, s, 1, bias=False), torch.nn.BatchNorm2d(o),
                                   torch.nn.ReLU(), torch.nn.Conv2d(o, o, 3, 1, 1, bias=False),
                                   torch.nn.BatchNorm2d(o))

    def features(self, x):
        h = self.stem(x)
        h = torch.relu(self.block1(h) + h)
        h = torch.relu(self.block2(h) + self.short2(h))
        return h.mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))
