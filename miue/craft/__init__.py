"""The MI-UE crafting engine: :func:`craft_fast` (docs/crafting.md).

Where things are:

``run.py``          :func:`craft_fast`: arguments, configuration, the round loop with
                    checkpoints, resume and Ctrl-C, the released result
``engine.py``       :class:`~miue.craft.engine.Engine`: one process's parts put together, one
                    round (``run_round``) by its schedule
``shard.py``        this process's images, labels and δ, and the batch orders
``surrogate.py``    the surrogate: build, SGD steps, learning-rate schedules, REM's ρ, state
``attack.py``       PGD passes, one step, restarts, the CUDA-graphed step, random starts
``schedules.py``    what a round does: ``rounds`` (train, then PGD) or REM's ``per-batch`` loop
``inputs.py``       images and labels in, validated (any layout, uint8 or float)
``store.py``        the δ store: images and δ on the device or streamed from host memory
``graphs.py``       the CUDA graph of one PGD step
``checkpoint.py``   checkpoint files, resume checks, ``extend=True``
``interrupt.py``    Ctrl-C: finish the round, checkpoint, :class:`CraftInterrupted`
``distributed.py``  ranks, shards, the collectives a multi-process run needs
``result.py``       :class:`CraftResult` (save/load/export) and :func:`quantize_images` (clean + δ
                    on the uint8 grid; not to be confused with :mod:`miue.data.release`, which writes
                    a released image tree)
"""

from miue.craft.checkpoint import CHECKPOINT_NAME, METRICS_NAME
from miue.craft.inputs import as_nchw_uint8_or_float, prepare_inputs
from miue.craft.interrupt import CraftInterrupted
from miue.craft.result import CraftResult, quantize_images
from miue.craft.run import craft_fast

__all__ = ["craft_fast", "CraftResult", "CraftInterrupted", "quantize_images", "as_nchw_uint8_or_float",
           "prepare_inputs", "CHECKPOINT_NAME", "METRICS_NAME"]


def __getattr__(name):
    if name == "release":  # the old name, easily confused with the module miue.data.release
        import warnings

        warnings.warn("miue.craft.release is renamed miue.craft.quantize_images", DeprecationWarning, stacklevel=2)
        return quantize_images
    raise AttributeError(f"module 'miue.craft' has no attribute {name!r}")
