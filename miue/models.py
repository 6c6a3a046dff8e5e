"""Network architectures for surrogates (crafting) and victims (evaluation).

Every model here takes images in [0, 1] (N×C×H×W, any channel count and size) and has
``forward(x, return_features=False)``: logits, or ``(features, logits)`` with features the
input of the final linear layer (after global pooling). ``normalize=True`` puts the input
normalisation inside the model (the MI-UE surrogate does this; the paper's victims do not).

Built from torchvision where it has the architecture (ResNet-18/50, VGG-19-BN,
DenseNet-121, ViT), adapted to small images with the usual CIFAR stems; written here where
it does not (WRN-34-10; for CPU runs the small CNNs ``cnn-small`` / ``cnn`` / ``cnn-wide`` (width
16 / 32 / 64), a ResNet-8 ``resnet-small`` from torchvision blocks and the same ResNet-8 at half width
``resnet-narrow`` (widths 8 / 16 / 32, about 3× cheaper), and an ``mlp``).

:func:`build_model` makes one by name; :class:`FeatureModel` adapts a user's module.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# input normalisations by name: (mean, std) for 3 channels; other channel counts use their averages
NORMS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # the MI-UE surrogate
    "cifar": ((0.4915, 0.4823, 0.4468), (0.2470, 0.2435, 0.2616)),  # TAP's surrogate (its consts.py)
    "half": ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),  # REM's surrogate: (x - 0.5), inputs in [-0.5, 0.5]
}


class Normalize(nn.Module):
    """Per-channel (x - mean) / std; ImageNet statistics (or ``kind``'s) for 3 channels, their average otherwise."""

    def __init__(self, channels: int, mean=None, std=None, kind: str = "imagenet"):
        super().__init__()
        kmean, kstd = NORMS[kind]
        if mean is None:
            mean = kmean if channels == 3 else (sum(kmean) / 3,) * channels
        if std is None:
            std = kstd if channels == 3 else (sum(kstd) / 3,) * channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class _Net(nn.Module):
    """body: images -> pooled feature vector; head: the final nn.Linear."""

    def __init__(self, body: nn.Module, head: nn.Linear, channels: int, normalize):
        super().__init__()
        kind = "imagenet" if normalize is True else normalize
        self.norm = Normalize(channels, kind=kind) if kind and kind != "none" else nn.Identity()
        self.body = body
        self.head = head

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def forward(self, x, return_features: bool = False):
        h = self.body(self.norm(x))
        out = self.head(h)
        return (h, out) if return_features else out


# --------------------------------------------------------------------------- architectures


def _resnet(kind: str, channels: int, num_classes: int, small: bool):
    net = getattr(torchvision.models, kind)(weights=None, num_classes=num_classes)
    if small:  # CIFAR stem: 3x3 conv, stride 1, no max-pool
        net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    head = net.fc
    net.fc = nn.Identity()
    return net, head


def _vgg19(channels: int, num_classes: int, image_size: int):
    """VGG-19 with batch norm; global average pooling and one linear layer (the CIFAR variant).
    Below 32 px the last max-pools are dropped so that the feature map keeps at least 1 px."""
    feats = torchvision.models.vgg19_bn(weights=None).features  # (its 120M-parameter classifier is dropped)
    if channels != 3:
        feats[0] = nn.Conv2d(channels, 64, 3, padding=1)
    pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    keep = max(0, min(len(pools), int(math.floor(math.log2(max(image_size, 1))))))
    for i in pools[keep:]:
        feats[i] = nn.Identity()
    body = nn.Sequential(feats, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, nn.Linear(512, num_classes)


def _densenet121(channels: int, num_classes: int, small: bool):
    net = torchvision.models.densenet121(weights=None, num_classes=num_classes)
    if small:
        net.features.conv0 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        net.features.pool0 = nn.Identity()
    elif channels != 3:
        net.features.conv0 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    body = nn.Sequential(net.features, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, net.classifier


class _WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.short is None else self.short(o))


def _wrn(channels: int, num_classes: int, depth: int = 34, widen: int = 10):
    """Wide ResNet (Zagoruyko & Komodakis), pre-activation blocks; WRN-34-10 by default."""
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers = [nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)]
    cin = widths[0]
    for w, stride in zip(widths[1:], (1, 2, 2)):
        for j in range(n):
            layers.append(_WideBlock(cin, w, stride if j == 0 else 1))
            cin = w
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(cin, num_classes)


def _vit(channels: int, num_classes: int, image_size: int):
    """A small ViT (6 layers, width 256, 8 heads) with 4×4 patches (2×2 below 16 px)."""
    patch = 4 if image_size >= 16 else 2
    size = -(-image_size // patch) * patch
    vit = torchvision.models.VisionTransformer(
        image_size=size, patch_size=patch, num_layers=6, num_heads=8, hidden_dim=256, mlp_dim=512, num_classes=num_classes
    )
    vit.conv_proj = nn.Conv2d(channels, 256, patch, patch)
    head = vit.heads.head
    vit.heads = nn.Identity()

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            return self.vit(x)

    return Body(), head


def _small_cnn(channels: int, num_classes: int, width: int = 32):
    """A small CNN for CPU runs: three stride-2 3×3 conv + BN + ReLU stages, global average pooling."""
    w = width

    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    body = nn.Sequential(
        nn.Conv2d(channels, w // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(w // 2), nn.ReLU(inplace=True),
        *stage(w // 2, w), *stage(w, 2 * w), *stage(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, nn.Linear(4 * w, num_classes)


def _resnet_small(channels: int, num_classes: int, widths=(16, 32, 64)):
    """A ResNet-8 for CPU runs: a 3×3 stem and one torchvision BasicBlock per stage (strides 1, 2, 2)."""
    from torchvision.models.resnet import BasicBlock

    layers = [nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
    cin = widths[0]
    for w, stride in zip(widths, (1, 2, 2)):
        down = None
        if stride != 1 or cin != w:
            down = nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
        layers.append(BasicBlock(cin, w, stride, down))
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(cin, num_classes)


def _pil_linear(channels: int, num_classes: int, image_size: int):
    """PIL's surrogate: flatten, then two bias-free linear layers (D → C → C), linear overall."""
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size * image_size, num_classes, bias=False)), \
        nn.Linear(num_classes, num_classes, bias=False)


def _mlp(channels: int, num_classes: int, image_size: int, hidden=(512, 256)):
    """A two-hidden-layer MLP on the flattened image (square image_size² inputs)."""
    layers, cin = [nn.Flatten()], channels * image_size * image_size
    for h in hidden:
        layers += [nn.Linear(cin, h), nn.ReLU(inplace=True)]
        cin = h
    return nn.Sequential(*layers), nn.Linear(cin, num_classes)


ARCHS = ("resnet18", "resnet50", "resnet18-imagenet", "resnet50-imagenet", "vgg19", "densenet121", "wrn34-10", "vit",
         "cnn", "cnn-small", "cnn-wide", "resnet-small", "resnet-narrow", "mlp", "pil-linear")


def build_model(arch: str, num_classes: int, channels: int = 3, image_size: int = 32, normalize=False) -> _Net:
    """A model by name (one of ``ARCHS``) for ``channels``×``image_size``² inputs in [0, 1].

    ``resnet18``/``resnet50`` have the CIFAR stem (3×3 conv, stride 1, no max-pool) at every image
    size, as the official MI-UE code uses for its 32, 84 and 224 px sets; ``resnet18-imagenet`` /
    ``resnet50-imagenet`` have torchvision's ImageNet stem (7×7 stride 2 and a max-pool).
    ``normalize``: False/"none", True/"imagenet", "cifar" or "half" (the input normalisation
    inside the model, :data:`NORMS`)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    small = image_size <= 64
    if normalize not in (True, False) and normalize not in ("none",) + tuple(NORMS):
        raise ValueError(f"normalize must be a bool or one of {('none',) + tuple(NORMS)}, got {normalize!r}")
    if arch in ("resnet18", "resnet50"):
        body, head = _resnet(arch, channels, num_classes, True)
    elif arch in ("resnet18-imagenet", "resnet50-imagenet"):
        body, head = _resnet(arch.split("-")[0], channels, num_classes, False)
    elif arch == "vgg19":
        body, head = _vgg19(channels, num_classes, image_size)
    elif arch == "densenet121":
        body, head = _densenet121(channels, num_classes, small)
    elif arch == "wrn34-10":
        body, head = _wrn(channels, num_classes)
    elif arch == "vit":
        body, head = _vit(channels, num_classes, image_size)
    elif arch == "cnn":
        body, head = _small_cnn(channels, num_classes, 32)
    elif arch == "cnn-small":
        body, head = _small_cnn(channels, num_classes, 16)
    elif arch == "cnn-wide":
        body, head = _small_cnn(channels, num_classes, 64)
    elif arch == "resnet-small":
        body, head = _resnet_small(channels, num_classes)
    elif arch == "resnet-narrow":
        body, head = _resnet_small(channels, num_classes, (8, 16, 32))
    elif arch == "mlp":
        body, head = _mlp(channels, num_classes, image_size)
    elif arch == "pil-linear":
        body, head = _pil_linear(channels, num_classes, image_size)
    else:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return _Net(body, head, channels, normalize)


class FeatureModel(nn.Module):
    """Adapts any classifier to ``forward(x, return_features)``.

    A model that already takes ``return_features`` is used as is. Otherwise its output may
    be ``(features, logits)``; or, for a model returning logits, the features are the input
    of its last ``nn.Linear`` module, captured by a forward hook.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._native = isinstance(model, _Net)
        self._captured = None
        self._hook = None
        if not self._native:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if linears:
                self._hook = linears[-1].register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self._captured = inputs[0]

    def forward(self, x, return_features: bool = False):
        if self._native:
            return self.model(x, return_features=return_features)
        self._captured = None
        out = self.model(x)
        if isinstance(out, (tuple, list)) and len(out) == 2:
            feats, logits = out
        else:
            logits = out
            feats = self._captured
            if return_features and feats is None:
                raise ValueError(
                    "surrogate: cannot find features: the model returns logits and has no nn.Linear layer; "
                    "return (features, logits) from forward instead"
                )
        if return_features:
            return feats.flatten(1), logits
        return logits
