"""Tests of miue.evaluation.defenses: the preprocessing defenses (uint8 N×C×H×W) and the batch
augmentations (float in [0, 1], seeded torch.Generator) used while a victim trains.

Small batches only (≤ 16 images of ≤ 32×32), torch on one thread.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from miue.evaluation import defenses as D


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


# --------------------------------------------------------------------------- helpers


def smooth_uint8(n=6, c=3, h=16, w=16, seed=0) -> torch.Tensor:
    """Natural-ish uint8 images: a smooth random field (bilinear upsampling of a coarse grid)
    plus a little noise, covering most of 0..255."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, 4, 4, generator=g)
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    x = x + 0.05 * torch.randn(n, c, h, w, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def noise_uint8(n=6, c=3, h=16, w=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def float_batch(n=8, c=3, h=32, w=32, seed=0, lo=0.1) -> torch.Tensor:
    """Float images in [lo, 1) (strictly positive when lo > 0, so a zeroed pixel is visible)."""
    g = torch.Generator().manual_seed(seed)
    return lo + (1 - lo) * torch.rand(n, c, h, w, generator=g)


def total_variation(x: torch.Tensor) -> float:
    x = x.double()
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum()).item()


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry():
    assert set(D.DEFENSES) == set(D.PREPROCESS) | set(D.AUGMENT) | {"at"}
    assert len(set(D.DEFENSES)) == len(D.DEFENSES)
    assert set(D.PREPROCESS) == {"jpeg", "jpeg75", "jpeg90", "resize", "grayscale", "bitdepth", "blur"}
    assert set(D.AUGMENT) == {"cutout", "cutmix", "mixup", "noise", "ueraser", "coin"}


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name", D.PREPROCESS)
@pytest.mark.parametrize("channels", [1, 3])
def test_preprocess_shape_dtype_and_input_untouched(name, channels):
    x = smooth_uint8(c=channels, seed=channels)
    before = x.clone()
    out = D.preprocess(name, x)
    assert out.dtype == torch.uint8
    assert out.shape == x.shape
    assert torch.equal(x, before), "preprocess must not modify its input"


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_changes_but_stays_close(channels):
    x = smooth_uint8(n=5, c=channels, h=24, w=24, seed=10 + channels)
    out = D.jpeg(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert not torch.equal(out, x), "quality-10 JPEG must alter the images"
    diff = (out.float() - x.float()).abs().mean().item()
    assert diff > 0.5
    # much closer to its input than an unrelated image would be
    other = smooth_uint8(n=5, c=channels, h=24, w=24, seed=99)
    unrelated = (other.float() - x.float()).abs().mean().item()
    assert diff < 0.5 * unrelated, (diff, unrelated)
    assert diff < 25, diff  # quality 10 on smooth images: a few grey levels on average


def test_jpeg_quality_orders_distortion():
    x = smooth_uint8(n=4, c=3, h=24, w=24, seed=3)
    d10 = (D.jpeg(x, quality=10).float() - x.float()).abs().mean()
    d95 = (D.jpeg(x, quality=95).float() - x.float()).abs().mean()
    assert d95 < d10


def test_jpeg_noise_images_and_batch_independence():
    x = noise_uint8(n=4, c=3, h=16, w=16, seed=1)
    out = D.jpeg(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    # each image is coded on its own: the batch result equals the one-by-one results
    for i in range(4):
        assert torch.equal(out[i:i + 1], D.jpeg(x[i:i + 1]))


def test_jpeg_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        D.jpeg(noise_uint8(n=2, c=2, h=8, w=8))
    for q in (0, 96):
        with pytest.raises(ValueError, match="quality"):
            D.jpeg(noise_uint8(n=1, c=1, h=8, w=8), quality=q)


def test_jpeg_matches_a_plain_pillow_round_trip():
    """The batch path (layout changes, one reused buffer) equals encoding each image alone."""
    import io

    import numpy as np
    from PIL import Image

    x = smooth_uint8(n=3, c=3, h=20, w=12, seed=5)
    out = D.jpeg(x)
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=10)
        ref = torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(out[i], ref)


def test_grayscale_rgb():
    x = noise_uint8(n=5, c=3, h=9, w=11, seed=2)
    out = D.grayscale(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    xf = x.double()
    luma = 0.299 * xf[:, 0] + 0.587 * xf[:, 1] + 0.114 * xf[:, 2]
    assert (out[:, 0].double() - luma).abs().max().item() <= 1.0
    # already grey images are a fixed point (up to rounding)
    assert (D.grayscale(out).int() - out.int()).abs().max().item() <= 1


def test_grayscale_one_channel_is_copy():
    x = noise_uint8(n=3, c=1, h=8, w=8, seed=3)
    out = D.grayscale(x)
    assert torch.equal(out, x)
    out[0, 0, 0, 0] ^= 1
    assert not torch.equal(out, x), "grayscale must return a copy, not a view of its input"


def test_grayscale_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        D.grayscale(noise_uint8(n=2, c=4, h=8, w=8))


@pytest.mark.parametrize("channels", [1, 3])
def test_bitdepth_levels(channels):
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, channels, 1, 1)
    out = D.bitdepth(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert set(out.unique().tolist()) == {0, 85, 170, 255}
    # nearest level: error at most half a step (127.5 / 3 = 42.5)
    assert (out.int() - x.int()).abs().max().item() <= 43
    # monotone in the input
    flat = out[0, 0].flatten()
    assert torch.all(flat[1:] >= flat[:-1])
    assert torch.equal(D.bitdepth(out), out), "the levels are a fixed point"
    y = noise_uint8(n=4, c=channels, seed=4)
    assert set(D.bitdepth(y).unique().tolist()) <= {0, 85, 170, 255}


@pytest.mark.parametrize("channels", [1, 3])
def test_blur_smooths_and_keeps_mean(channels):
    x = noise_uint8(n=4, c=channels, h=16, w=16, seed=5)
    out = D.blur(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert total_variation(out) < 0.6 * total_variation(x)
    per_image = (out.double().mean((1, 2, 3)) - x.double().mean((1, 2, 3))).abs()
    assert per_image.max().item() < 3.0, per_image
    # a constant image stays constant
    c = torch.full((1, channels, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(D.blur(c), c)


def test_blur_is_per_channel():
    x = noise_uint8(n=2, c=3, h=12, w=12, seed=6)
    out = D.blur(x)
    for ch in range(3):
        assert torch.equal(out[:, ch:ch + 1], D.blur(x[:, ch:ch + 1].contiguous()))


@pytest.mark.parametrize("name", D.PREPROCESS)
def test_preprocess_deterministic(name):
    x = smooth_uint8(n=3, c=3, seed=7)
    assert torch.equal(D.preprocess(name, x), D.preprocess(name, x))


def test_preprocess_unknown_name_raises_value_error():
    with pytest.raises(ValueError):
        D.preprocess("sharpen", smooth_uint8(n=1, c=1))


def test_preprocess_unknown_name_raises():
    with pytest.raises((ValueError, KeyError)):
        D.preprocess("sharpen", smooth_uint8(n=1, c=1))


# --------------------------------------------------------------------------- batch augmentations


def _box_of(mask: torch.Tensor):
    """(rows, cols) spanned by a boolean H×W mask, asserting it is exactly that rectangle."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    r0, r1, c0, c1 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
    rect = torch.zeros_like(mask)
    rect[r0:r1, c0:c1] = True
    assert torch.equal(mask, rect), "the region is not a rectangle"
    return r1 - r0, c1 - c0


@pytest.mark.parametrize("channels", [1, 3])
def test_cutout_zeroes_one_square(channels):
    x = float_batch(n=16, c=channels, h=32, w=32, seed=1)
    out = D.cutout(x, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert x.min() > 0
    for i in range(x.shape[0]):
        zero = out[i] == 0
        # the same pixels in every channel
        assert torch.equal(zero, zero[:1].expand_as(zero))
        m = zero[0]
        assert m.any(), "cutout must erase something"
        h, w = _box_of(m)
        assert h <= 16 and w <= 16
        # rest unchanged
        assert torch.equal(out[i][~zero], x[i][~zero])
    # an interior square is (almost) full size: a real cutout, not a pixel
    sizes = [_box_of(out[i, 0] == 0) for i in range(16)]
    assert max(h * w for h, w in sizes) >= 15 * 15


def test_cutout_interior_square_is_16px():
    x = float_batch(n=64, c=1, h=64, w=64, seed=2)
    out = D.cutout(x, gen(1))
    sizes = {_box_of(out[i, 0] == 0) for i in range(64)}
    assert (16, 16) in sizes, sizes


def test_cutout_input_untouched_and_deterministic():
    x = float_batch(n=4, c=3, h=20, w=20, seed=3)
    before = x.clone()
    a = D.cutout(x, gen(5))
    assert torch.equal(x, before)
    assert torch.equal(a, D.cutout(x, gen(5)))
    assert not torch.equal(a, D.cutout(x, gen(6)))


@pytest.mark.parametrize("channels", [1, 3])
def test_noise(channels):
    x = float_batch(n=6, c=channels, h=12, w=12, seed=4, lo=0.0)
    x[0] = 0.0
    x[1] = 1.0
    out = D.gaussian_noise(x, gen(0))
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert (out != x).float().mean() > 0.5
    d = (out - x)[2:]
    # std 8/255 (clamping only shrinks it)
    assert 0.02 < d.std().item() < 8 / 255 * 1.2
    assert abs(d.mean().item()) < 0.01
    assert torch.equal(out, D.gaussian_noise(x, gen(0)))


def _mix_checks(x, y, xm, ym, C, kind):
    N = x.shape[0]
    assert xm.shape == x.shape and ym.shape == (N, C)
    assert torch.all(ym >= -1e-6)
    torch.testing.assert_close(ym.sum(1), torch.ones(N), atol=1e-5, rtol=0)
    mixed_two = 0
    for i in range(N):
        support = torch.nonzero(ym[i] > 1e-6).flatten().tolist()
        assert 1 <= len(support) <= 2
        # find the partner j with xm[i] = a x[i] + (1 - a) x[j] (mixup) or a box of x[j] (cutmix)
        found = False
        for j in range(N):
            if kind == "mixup":
                d = x[i] - x[j]
                if j == i:
                    if torch.allclose(xm[i], x[i], atol=1e-6):
                        lam = 1.0
                    else:
                        continue
                else:
                    lam = ((xm[i] - x[j]) * d).sum() / (d * d).sum()
                    lam = lam.item()
                    if not (-1e-5 <= lam <= 1 + 1e-5):
                        continue
                    if not torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5):
                        continue
                expect = torch.zeros(C)
                expect[y[i]] += lam
                expect[y[j]] += 1 - lam
            else:
                from_j = (xm[i] == x[j]) & (xm[i] != x[i])
                from_i = xm[i] == x[i]
                if not torch.all(from_i | (xm[i] == x[j])):
                    continue
                m = from_j[0]
                if not torch.equal(from_j, m.expand_as(from_j)):
                    continue
                area = m.float().mean().item()
                if m.any():
                    _box_of(m)
                expect = torch.zeros(C)
                expect[y[i]] += 1 - area
                expect[y[j]] += area
            if torch.allclose(ym[i], expect, atol=1e-4):
                found = True
                if y[j] != y[i] and 1e-3 < expect[y[i]].item() < 1 - 1e-3:
                    mixed_two += 1
                break
        assert found, f"image {i} is not a {kind} of two batch images consistent with its soft label"
    assert mixed_two >= N // 2, f"only {mixed_two} of {N} targets mix two labels"


@pytest.mark.parametrize("channels", [1, 3])
def test_mixup(channels):
    N, C = 12, 5
    x = float_batch(n=N, c=channels, h=8, w=8, seed=5, lo=0.0)
    y = torch.arange(N) % C
    xm, ym = D.augment("mixup", x, y, C, gen(3))
    assert xm.min() >= 0 and xm.max() <= 1
    _mix_checks(x, y, xm, ym, C, "mixup")


@pytest.mark.parametrize("channels", [1, 3])
def test_cutmix(channels):
    N, C = 12, 5
    x = float_batch(n=N, c=channels, h=16, w=16, seed=6, lo=0.0)
    y = torch.arange(N) % C
    xm, ym = D.augment("cutmix", x, y, C, gen(4))
    assert xm.min() >= 0 and xm.max() <= 1
    _mix_checks(x, y, xm, ym, C, "cutmix")


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mix_deterministic_and_same_label_batch(name):
    N, C = 8, 3
    x = float_batch(n=N, c=3, h=8, w=8, seed=7, lo=0.0)
    y = torch.full((N,), 2)
    a = D.augment(name, x, y, C, gen(9))
    b = D.augment(name, x, y, C, gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # one class: the soft target stays one-hot
    torch.testing.assert_close(a[1], F.one_hot(y, C).float())


@pytest.mark.parametrize("channels", [1, 3])
def test_ueraser(channels):
    x = float_batch(n=8, c=channels, h=16, w=16, seed=8, lo=0.0)
    before = x.clone()
    out, soft = D.augment("ueraser", x, torch.zeros(8, dtype=torch.long), 2, gen(1))
    assert soft is None
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before)
    for i in range(8):
        assert not torch.allclose(out[i], x[i]), f"image {i} unchanged"
    assert torch.equal(out, D.ueraser(x, gen(1)))
    assert not torch.equal(out, D.ueraser(x, gen(2)))


@pytest.mark.parametrize("name", D.AUGMENT)
def test_augment_determinism_and_range(name):
    N, C = 6, 3
    x = float_batch(n=N, c=3, h=16, w=16, seed=9, lo=0.0)
    y = torch.arange(N) % C
    a_img, a_soft = D.augment(name, x, y, C, gen(11))
    b_img, b_soft = D.augment(name, x, y, C, gen(11))
    assert torch.equal(a_img, b_img)
    assert (a_soft is None) == (b_soft is None) == (name not in ("mixup", "cutmix"))
    if a_soft is not None:
        assert torch.equal(a_soft, b_soft)
    assert a_img.shape == x.shape and a_img.min() >= 0 and a_img.max() <= 1
    assert not torch.equal(a_img, x)


def test_augment_unknown_name_raises():
    x = float_batch(n=2, c=1, h=8, w=8)
    with pytest.raises(ValueError, match="unknown augmentation"):
        D.augment("rotate", x, torch.zeros(2, dtype=torch.long), 2, gen())
    with pytest.raises(ValueError):
        D.augment("jpeg", x, torch.zeros(2, dtype=torch.long), 2, gen())


# --------------------------------------------------------------------------- issue 38's defenses


def test_platform_jpeg_qualities_round_trip_and_order():
    """JPEG 90 ≈ JPEG 75 ≈ the original on a smooth image, and 10 > 75 > 90 in distortion."""
    ramp = torch.linspace(0, 255, 16).round().to(torch.uint8)
    img = (ramp.view(1, 1, 1, 16).expand(4, 3, 16, 16) // 2 + ramp.view(1, 1, 16, 1) // 2).contiguous()
    err = {}
    for name, q in (("jpeg", 10), ("jpeg75", 75), ("jpeg90", 90)):
        out = D.preprocess(name, img)
        assert torch.equal(out, D.jpeg(img, q))
        err[name] = (out.float() - img.float()).abs().mean().item()
    assert err["jpeg90"] < err["jpeg75"] < err["jpeg"]
    assert err["jpeg90"] < 2.0


def test_resize_keeps_smooth_images_and_removes_pixel_patterns():
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(D.preprocess("resize", flat), flat)
    checker = ((torch.arange(16).view(1, 16) + torch.arange(16).view(16, 1)) % 2 * 255).to(torch.uint8)
    out = D.resize(checker.view(1, 1, 16, 16).contiguous())
    assert out.shape == (1, 1, 16, 16)
    assert (out.float() - 127.5).abs().max() <= 3.0  # a 1-pixel checkerboard averages out (to ±3 at the border)
    odd = D.resize(torch.randint(0, 256, (3, 1, 9, 7), dtype=torch.uint8))
    assert odd.shape == (3, 1, 9, 7)


def test_mixup_uses_one_lambda_per_batch():
    N, C = 16, 4
    x = float_batch(n=N, c=3, h=8, w=8, seed=11, lo=0.0)
    y = torch.arange(N) % C
    xm, ym = D.mixup(x, F.one_hot(y, C).float(), gen(5))
    lam = None
    for i in range(N):  # xm[i] = λ x[i] + (1 − λ) x[j] for one j: recover λ per image
        if torch.allclose(xm[i], x[i], atol=1e-6):
            continue  # mixed with itself: any λ
        for j in range(N):
            if j == i:
                continue
            den = x[i] - x[j]
            est = ((xm[i] - x[j]) * den).sum() / (den * den).sum()
            if torch.allclose(xm[i], est * x[i] + (1 - est) * x[j], atol=1e-5):
                lam = float(est) if lam is None else lam
                assert float(est) == pytest.approx(lam, abs=1e-4), f"image {i}: λ {float(est)} vs {lam}"
                break
        else:
            raise AssertionError(f"image {i} is not a mix of two images")
    assert lam is not None and 0 < lam < 1


def test_cutmix_pastes_one_box_for_the_whole_batch():
    N, C = 10, 5
    x = float_batch(n=N, c=1, h=16, w=16, seed=12, lo=0.1)
    y = torch.arange(N) % C
    found = False
    for seed in range(20):  # a seed whose box is not empty
        xm, ym = D.cutmix(x, F.one_hot(y, C).float(), gen(seed))
        changed = (xm != x).any(1)  # N×H×W
        if changed.any():
            found = True
            union = changed.any(0)
            for i in range(N):  # every image changed inside one box (or is pasted onto itself)
                assert not (changed[i] & ~union).any()
            rows, cols = union.any(1).nonzero(), union.any(0).nonzero()
            box = torch.zeros_like(union)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert torch.equal(union, box)
            area = box.float().mean().item()
            for i in range(N):
                assert float(ym[i].sum()) == pytest.approx(1.0)
                assert float(ym[i].max()) >= 1 - area - 1e-6
            break
    assert found


def test_coin_zero_displacement_and_wrap():
    x = float_batch(n=3, c=3, h=8, w=8, seed=13, lo=0.0)
    assert torch.allclose(D.coin(x, gen(0), alpha=0.0), x)
    flat = torch.full((2, 3, 8, 8), 0.25)
    assert torch.allclose(D.coin(flat, gen(1)), flat)  # (bilinear with wrap-around keeps a constant image)
    out = D.coin(x, gen(2))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1 and not torch.allclose(out, x)
    a, b = D.augment("coin", x, torch.zeros(3, dtype=torch.long), 2, gen(4)), D.augment(
        "coin", x, torch.zeros(3, dtype=torch.long), 2, gen(4))
    assert torch.equal(a[0], b[0]) and a[1] is None
    # the channels move together: one displacement field per image
    x2 = x[:, :1].expand(3, 3, 8, 8).contiguous()
    o2 = D.coin(x2, gen(5))
    assert torch.allclose(o2[:, 0], o2[:, 1]) and torch.allclose(o2[:, 1], o2[:, 2])


def test_coin_matches_a_hand_bilinear_sample_with_wrap():
    x = torch.arange(16.0).view(1, 1, 4, 4) / 16
    g = gen(7)
    out = D.coin(x, g, alpha=1.5)
    g = gen(7)
    dy = (torch.rand(1, 4, 4, generator=g) * 2 - 1) * 1.5
    dx = (torch.rand(1, 4, 4, generator=g) * 2 - 1) * 1.5
    i, j = 2, 3
    yy, xx = i + float(dy[0, i, j]), j + float(dx[0, i, j])
    y0, x0 = math.floor(yy), math.floor(xx)
    wy, wx = yy - y0, xx - x0
    v = lambda a, b: float(x[0, 0, a % 4, b % 4])  # noqa: E731
    want = (v(y0, x0) * (1 - wx) + v(y0, x0 + 1) * wx) * (1 - wy) + (v(y0 + 1, x0) * (1 - wx) + v(y0 + 1, x0 + 1) * wx) * wy
    assert float(out[0, 0, i, j]) == pytest.approx(want, abs=1e-6)


def test_evaluate_records_peak_and_final_accuracy():
    from miue.evaluation.victims import evaluate

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(64) % 4
    r = evaluate(x, y, x, y, preset="quick", arch="mlp", epochs=3, progress=False, defense="coin")
    assert r.peak_test_acc == max(r.test_acc_history) and r.test_acc == r.test_acc_history[-1]
    assert r.to_dict()["peak_test_acc"] == r.peak_test_acc


def test_every_defense_is_a_record_and_the_victims_compare_no_names():
    """Defenses are records (miue.evaluation.defenses.REGISTRY): a kind, a function, a summary; the victims'
    training loop dispatches on the kind, never on a defense's name."""
    import ast
    import inspect

    import miue.evaluation.victims as V

    assert set(D.DEFENSES) == set(D.REGISTRY) and D.PREPROCESS and D.AUGMENT
    for name, d in D.REGISTRY.items():
        assert d.name == name and d.kind in D.KINDS and d.summary and callable(d.fn)
    tree = ast.parse(inspect.getsource(V))
    named = sorted({node.value for cmp in ast.walk(tree) if isinstance(cmp, ast.Compare)
                    for side in [cmp.left, *cmp.comparators] for node in ast.walk(side)
                    if isinstance(node, ast.Constant) and node.value in D.REGISTRY})
    assert not named, f"miue/evaluation/victims.py compares defense names as strings: {named}"
    with pytest.raises(ValueError, match="kind must be one of"):
        D.Defense("x", "sometimes", lambda x: x, "s")
