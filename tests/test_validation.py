"""Bad input raises a clear exception naming the argument (issue 2's list)."""

import pytest
import torch

import miue

F = torch.randn(6, 4)
Y = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: miue.supcon_loss(F[0], Y), ValueError, "features must be a 2-D"),
        (lambda: miue.supcon_loss(F.unsqueeze(0), Y), ValueError, "features must be a 2-D"),
        (lambda: miue.supcon_loss(F.long(), Y), TypeError, "features must be a floating-point"),
        (lambda: miue.supcon_loss(F.numpy(), Y), TypeError, "features must be a torch.Tensor"),
        (lambda: miue.supcon_loss(torch.randn(0, 4), Y[:0]), ValueError, "at least 1 row"),
        (lambda: miue.supcon_loss(torch.randn(6, 0), Y), ValueError, "at least one column"),
        (lambda: miue.supcon_loss(F, Y[:5]), ValueError, "labels has 5 entries but features has 6"),
        (lambda: miue.supcon_loss(F, Y.float()), TypeError, "labels must be integers"),
        (lambda: miue.supcon_loss(F, Y.bool()), TypeError, "labels must be integers"),
        (lambda: miue.supcon_loss(F, Y[:, None]), ValueError, "labels must be a 1-D"),
        (lambda: miue.supcon_loss(F, Y.to("meta")), ValueError, "labels are on meta"),
        (lambda: miue.supcon_loss(F, Y, temperature=0), ValueError, "temperature must be"),
        (lambda: miue.supcon_loss(F, Y, temperature=-1), ValueError, "temperature must be"),
        (lambda: miue.supcon_loss(F, Y, temperature=float("nan")), ValueError, "temperature must be"),
        (lambda: miue.supcon_loss(F, Y, eps=-1e-8), ValueError, "eps must be"),
        (lambda: miue.supcon_loss(F, Y, eps=torch.tensor(1.0)), TypeError, "eps must be a Python float"),
        (lambda: miue.intra_class_cosine_loss(F, Y, 0), ValueError, "num_classes must be >= 1"),
        (lambda: miue.intra_class_cosine_loss(F, Y, 2.5), TypeError, "num_classes must be a Python int"),
        (lambda: miue.intra_class_cosine_loss(F, Y, 2), ValueError, r"labels must lie in \[0, num_classes=2\)"),
        (lambda: miue.grouped_normalize(F, Y - 1, 3), ValueError, "labels must lie in"),
        (lambda: miue.grouped_normalize(F, Y, torch.tensor(3)), TypeError, "num_classes must be a Python int"),
    ],
)
def test_loss_ops_reject_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


D = torch.zeros(2, 3, 4, 4)
G = torch.randn(2, 3, 4, 4)
C = torch.rand(2, 3, 4, 4)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: miue.pgd_linf_step_(D.long(), G, C, 0.1, 0.1), TypeError, "delta must be a floating-point"),
        (lambda: miue.pgd_linf_step_(D, G[:1], C, 0.1, 0.1), ValueError, "grad has shape"),
        (lambda: miue.pgd_linf_step_(D, G.int(), C, 0.1, 0.1), TypeError, "grad must be a floating-point"),
        (lambda: miue.pgd_linf_step_(D, G, C[:, :1], 0.1, 0.1), ValueError, "clean has shape"),
        (lambda: miue.pgd_linf_step_(D, G, C.int(), 0.1, 0.1), TypeError, "clean must be uint8 or floating"),
        (lambda: miue.pgd_linf_step_(D, G.to("meta"), C, 0.1, 0.1), ValueError, "grad is on meta"),
        (lambda: miue.pgd_linf_step_(D, G, C, 0.1, -0.1), ValueError, "eps must be"),
        (lambda: miue.pgd_linf_step_(D, G, C, float("inf"), 0.1), ValueError, "step_size must be finite"),
        (lambda: miue.pgd_linf_step_(D, G, C, torch.ones(2), 0.1), ValueError, "step_size must be a float or a one-element"),
        (lambda: miue.pgd_linf_step_(D, G, C, 0.1, torch.tensor(-1.0)), ValueError, "eps must be"),
        (lambda: miue.pgd_linf_step_(D, G, C, 0.1, 0.1, lo=1, hi=0), ValueError, "lo must be <= hi"),
        (lambda: miue.project_linf_(D, C, -1), ValueError, "eps must be"),
        (lambda: miue.project_linf_(D, "x", 0.1), TypeError, "clean must be a torch.Tensor"),
    ],
)
def test_pgd_ops_reject_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_validation_switch():
    y = torch.tensor([0, 1, 5, 0, 1, 2])
    with pytest.raises(ValueError):
        miue.intra_class_cosine_loss(F, y, 3)
    old = miue.set_validation(False)
    try:
        assert torch.isfinite(miue.intra_class_cosine_loss(F, y, 3))
    finally:
        miue.set_validation(old)
    with pytest.raises(ValueError):
        miue.intra_class_cosine_loss(F, y, 3)
    assert torch.isfinite(miue.intra_class_cosine_loss(F, y, 3, validate=False))


def test_labels_of_small_integer_dtypes_are_accepted():
    for dt in (torch.int8, torch.int16, torch.uint8, torch.int32):
        a = miue.supcon_loss(F, Y.to(dt))
        b = miue.supcon_loss(F, Y)
        assert a.item() == b.item()
