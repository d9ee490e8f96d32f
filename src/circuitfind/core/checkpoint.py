"""Long runs that survive: checkpoints, and stopping cleanly on SIGINT/SIGTERM.

A method that can run for hours takes a ``Checkpointer``: it calls ``restore()`` once at the start
(None for a fresh run) and ``step(state_fn)`` after each unit of work (an edge test, an epoch).
``step`` writes ``state_fn()`` atomically every ``every_steps`` steps or ``every_seconds`` seconds,
and, when a stop was requested by a signal, writes it once more and raises ``RunInterrupted``.
Methods never see signals, and an interrupted step is never half-recorded: the state is only
taken between steps.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .files import atomic_write

CHECKPOINT = "checkpoint.pt"


class RunInterrupted(Exception):
    """The run stopped on a signal after writing a final checkpoint."""

    def __init__(self, folder: Path, signal_name: str, steps: int):
        self.folder, self.signal_name, self.steps = folder, signal_name, steps
        super().__init__(f"interrupted by {signal_name} after {steps} steps; checkpoint saved in {folder}")


class Checkpointer:
    def __init__(self, folder: Path | None, config_hash: str, every_steps: int = 100,
                 every_seconds: float = 60.0):
        self.folder = None if folder is None else Path(folder)
        self.config_hash = config_hash
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.stop_signal: str | None = None
        self._steps_since, self._last_write, self.steps = 0, time.monotonic(), 0
        self.n_written = 0

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / CHECKPOINT

    def restore(self) -> dict | None:
        """The saved state of this config, or None.  A checkpoint of another config is an error:
        resuming from it would silently mix two runs."""
        if self.path is None or not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved.get("config_hash") != self.config_hash:
            raise ValueError(
                f"{self.path} belongs to a run of a different config (hash {saved.get('config_hash')}, "
                f"this one {self.config_hash}); choose another run folder or delete it"
            )
        torch.set_rng_state(saved["torch_rng"])
        self.steps = saved.get("steps", 0)
        return saved["state"]

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        saved = dict(config_hash=self.config_hash, steps=self.steps, torch_rng=torch.get_rng_state(),
                     state=state, saved_at=time.time())
        atomic_write(self.path, lambda tmp: torch.save(saved, tmp))
        self._steps_since, self._last_write = 0, time.monotonic()
        self.n_written += 1

    def step(self, state_fn) -> None:
        """One unit of work is done: write a checkpoint when due, stop when asked."""
        self.steps += 1
        self._steps_since += 1
        if self.stop_signal is not None:
            self.save(state_fn())
            raise RunInterrupted(self.folder, self.stop_signal, self.steps)
        if self._steps_since >= self.every_steps or time.monotonic() - self._last_write >= self.every_seconds:
            self.save(state_fn())

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()

    @contextmanager
    def stop_on_signals(self, signals=(signal.SIGINT, signal.SIGTERM)):
        """Turn SIGINT/SIGTERM into a request to stop at the next step (main thread only)."""
        def request_stop(signum, frame):
            if self.stop_signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, request_stop) for s in signals}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
