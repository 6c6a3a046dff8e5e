"""Test configuration.

Where torch sees no CUDA GPU, TRITON_INTERPRET=1 is set before anything imports miue's Triton
kernels, so that they run on CPU tensors in Triton's interpreter. On a machine with a GPU it is
left as it is (unset: Triton compiles the kernels for the card, and ``test_cuda.py`` checks
that it did). torch is imported first to ask; importing torch does not import triton, and
triton reads the variable when a kernel is decorated (``miue.kernels`` reads it at import).
An explicit TRITON_INTERPRET in the environment always wins. Hypothesis profiles: "ci"
(default; bounded example counts, no deadline) and "dev" (more examples): select with
HYPOTHESIS_PROFILE=dev.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import miue  # noqa: E402


def pytest_report_header(config):
    return f"miue backends: {miue.available_backends()}; cuda: {torch.cuda.is_available()}; torch {torch.__version__}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def epoch_rounds():
    """The CPU presets (``cnn``, ``demo``, ``cpu``) train their surrogate a fixed number of SGD
    steps per round whatever the data's size (235 or 79 steps of 256 images). On the 32- to
    2,000-image sets of the crafting tests that would be most of their run time and test nothing
    they check, so those tests run the presets with one epoch per round (``train_steps=0``) and
    ask for it: a module with ``pytestmark = pytest.mark.usefixtures("epoch_rounds")``, a test
    with ``@pytest.mark.usefixtures("epoch_rounds")``. Tests that do not ask (the end-to-end
    check, the preset tests) get the presets as shipped; spawned processes always do. Set and
    restored by hand, not with ``monkeypatch``: tests that call ``monkeypatch.undo()`` keep it."""
    from miue.presets import PRESET_VALUES

    names = ("cnn", "demo", "cpu")
    shipped = {n: PRESET_VALUES[n]["train_steps"] for n in names}
    for n in names:
        PRESET_VALUES[n]["train_steps"] = 0
    try:
        yield
    finally:
        for n in names:
            PRESET_VALUES[n]["train_steps"] = shipped[n]


@pytest.fixture(autouse=True)
def _poison_triton_outputs():
    """Triton launchers allocate through miue.kernels._common.empty: make every new buffer
    NaN so that an element a kernel does not write fails the comparison."""
    try:
        from miue.ops._backend import _triton_importable

        if not _triton_importable():
            yield
            return
        from miue.kernels import _common
    except Exception:  # pragma: no cover
        yield
        return
    _common.POISON = True
    try:
        yield
    finally:
        _common.POISON = False


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (tests that train small models run faster and
    steadier beside other work); the thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
