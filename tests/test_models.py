"""Tests of miue.models: build_model for every architecture, the normalize option, and
FeatureModel's adaptation of user modules. Forward passes on 2-image batches only."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from miue.models import ARCHS, IMAGENET_MEAN, IMAGENET_STD, FeatureModel, Normalize, build_model

HEAVY = ("wrn34-10", "densenet121", "resnet50", "resnet50-imagenet", "vgg19")
LIGHT = tuple(a for a in ARCHS if a not in HEAVY)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def test_arch_list():
    assert set(ARCHS) == {"resnet18", "resnet50", "resnet18-imagenet", "resnet50-imagenet", "vgg19", "densenet121",
                          "wrn34-10", "vit", "cnn", "cnn-small", "cnn-wide", "resnet-small", "resnet-narrow", "mlp",
                          "pil-linear"}
    assert set(LIGHT) == {"resnet18", "resnet18-imagenet", "vit", "cnn", "cnn-small", "cnn-wide", "resnet-small",
                          "resnet-narrow", "mlp", "pil-linear"}


def _check_forward(model, channels, size, num_classes, n=2):
    model.eval()
    x = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(size + channels))
    with torch.no_grad():
        logits = model(x)
        feats, logits2 = model(x, return_features=True)
    assert logits.shape == (n, num_classes)
    assert feats.shape == (n, model.feature_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(feats).all()
    torch.testing.assert_close(logits, logits2)
    # the features are the input of the head
    torch.testing.assert_close(model.head(feats), logits, atol=1e-5, rtol=1e-5)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == num_classes
    return feats, logits


@pytest.mark.parametrize("arch", LIGHT)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_light_archs(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, 7, channels=channels, image_size=size)
    _check_forward(model, channels, size, 7)


@pytest.mark.parametrize("arch", HEAVY)
def test_heavy_archs_cifar_shape(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, channels=3, image_size=32)
    _check_forward(model, 3, 32, 10)


@pytest.mark.parametrize("arch", HEAVY)
def test_heavy_archs_fashion_mnist_shape(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, channels=1, image_size=28)
    _check_forward(model, 1, 28, 10)


def test_feature_dims():
    expected = {"resnet18": 512, "resnet50": 2048, "vgg19": 512, "densenet121": 1024, "wrn34-10": 640,
                "vit": 256, "cnn": 128, "cnn-small": 64}
    for arch in ("resnet18", "vit", "cnn", "cnn-small", "densenet121"):
        assert build_model(arch, 3, channels=1, image_size=8).feature_dim == expected[arch]


def test_vit_resizes_odd_sizes():
    torch.manual_seed(0)
    model = build_model("vit", 4, channels=3, image_size=30)  # not a multiple of the patch
    _check_forward(model, 3, 30, 4)


def test_models_train_backward():
    torch.manual_seed(0)
    model = build_model("cnn-small", 3, channels=1, image_size=12)
    x = torch.rand(4, 1, 12, 12)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_seeded_construction_is_deterministic():
    torch.manual_seed(3)
    a = build_model("cnn", 5, channels=3, image_size=16)
    torch.manual_seed(3)
    b = build_model("cnn", 5, channels=3, image_size=16)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("arch,channels", [("cnn-small", 1), ("cnn", 3), ("resnet18", 3)])
def test_normalize_option(arch, channels):
    torch.manual_seed(0)
    plain = build_model(arch, 5, channels=channels, image_size=16, normalize=False)
    normed = build_model(arch, 5, channels=channels, image_size=16, normalize=True)
    normed.body.load_state_dict(plain.body.state_dict())
    normed.head.load_state_dict(plain.head.state_dict())
    plain.eval()
    normed.eval()
    x = torch.rand(3, channels, 16, 16)
    with torch.no_grad():
        a, b = plain(x), normed(x)
        assert not torch.allclose(a, b, atol=1e-3), "normalize=True must change the outputs"
        mean = torch.tensor(IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)).view(1, -1, 1, 1)
        torch.testing.assert_close(normed(x), plain((x - mean) / std), atol=1e-4, rtol=1e-4)
    assert isinstance(normed.norm, Normalize) and isinstance(plain.norm, nn.Identity)


def test_normalize_module_other_channel_counts():
    n = Normalize(2)
    x = torch.rand(1, 2, 3, 3)
    torch.testing.assert_close(n(x), (x - sum(IMAGENET_MEAN) / 3) / (sum(IMAGENET_STD) / 3))


# --------------------------------------------------------------------------- FeatureModel


def test_feature_model_sequential_uses_last_linear_input():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    fm = FeatureModel(seq)
    x = torch.rand(5, 1, 3, 4)
    feats, logits = fm(x, return_features=True)
    expected = torch.relu(seq[1](x.flatten(1)))
    assert feats.shape == (5, 8) and logits.shape == (5, 3)
    torch.testing.assert_close(feats, expected)
    torch.testing.assert_close(logits, seq(x))
    torch.testing.assert_close(fm(x), seq(x))
    # features are differentiable (for the crafting objectives)
    xr = x.clone().requires_grad_(True)
    f, _ = fm(xr, return_features=True)
    f.sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0


def test_feature_model_conv_features_are_flattened():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 5 * 5, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    net = Net()
    feats, logits = FeatureModel(net)(torch.rand(3, 1, 5, 5), return_features=True)
    assert feats.shape == (3, 100) and logits.shape == (3, 2)


def test_feature_model_passes_tuple_through():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(9, 6), nn.Tanh())
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            h = self.body(x)
            return h * 2, self.fc(h)  # "features" deliberately differ from the last Linear's input

    torch.manual_seed(0)
    m = Pair()
    x = torch.rand(2, 1, 3, 3)
    feats, logits = FeatureModel(m)(x, return_features=True)
    h = m.body(x)
    torch.testing.assert_close(feats, h * 2)
    torch.testing.assert_close(logits, m.fc(h))
    torch.testing.assert_close(FeatureModel(m)(x), m.fc(h))


def test_feature_model_native_net():
    torch.manual_seed(0)
    net = build_model("cnn-small", 3, channels=1, image_size=8).eval()
    fm = FeatureModel(net)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        f1, l1 = fm(x, return_features=True)
        f2, l2 = net(x, return_features=True)
    torch.testing.assert_close(f1, f2)
    torch.testing.assert_close(l1, l2)


def test_feature_model_without_linear():
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    fm = FeatureModel(m)
    x = torch.rand(2, 1, 5, 5)
    assert fm(x).shape == (2, 3)  # logits alone still work
    with pytest.raises(ValueError, match="nn.Linear"):
        fm(x, return_features=True)


def test_feature_model_does_not_leak_features_between_calls():
    seq = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    fm = FeatureModel(seq)
    a = torch.rand(2, 1, 2, 2)
    b = torch.rand(5, 1, 2, 2)
    fa, _ = fm(a, return_features=True)
    fb, _ = fm(b, return_features=True)
    assert fa.shape == (2, 4) and fb.shape == (5, 4)
    torch.testing.assert_close(fb, b.flatten(1))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, "10", None])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn", num_classes)


@pytest.mark.parametrize("channels", [0, -3, 1.0])
def test_bad_channels(channels):
    with pytest.raises(ValueError, match="channels"):
        build_model("cnn", 10, channels=channels)


@pytest.mark.parametrize("arch", ["resnet9", "", "CNN", None])
def test_bad_arch(arch):
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model(arch, 10)
