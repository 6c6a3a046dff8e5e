"""Interrupt handling: Ctrl-C finishes the round, checkpoints it and raises :class:`CraftInterrupted`."""

from __future__ import annotations

import logging

log = logging.getLogger("miue.craft")


class CraftInterrupted(KeyboardInterrupt):
    """Ctrl-C during crafting: the current round was finished and checkpointed (when a
    checkpoint_dir was given); rerun with the same checkpoint_dir to resume."""

    def __init__(self, message: str, round_done: int, checkpoint_dir: str | None):
        super().__init__(message)
        self.round_done = round_done
        self.checkpoint_dir = checkpoint_dir


class GracefulInterrupt:
    """While active (main thread only), the first SIGINT sets a flag that the round loop
    reads after each round; a second SIGINT interrupts at once."""

    def __init__(self, enabled: bool):
        import signal
        import threading

        self.requested = False
        self._old = None
        self._signal = signal
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("second interrupt: aborting without a checkpoint for this round")
        self.requested = True
        log.warning("interrupt: finishing this round and saving a checkpoint (press Ctrl-C again to abort now)")

    def __enter__(self):
        if self.enabled:
            self._old = self._signal.signal(self._signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._signal.signal(self._signal.SIGINT, self._old)
        return False
