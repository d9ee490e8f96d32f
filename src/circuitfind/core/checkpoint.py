"""Long runs that survive: checkpoints, and stopping cleanly on SIGINT/SIGTERM.

A method that can run for hours takes a ``Checkpointer``: it calls ``restore()`` once at the start
(None for a fresh run) and ``step(state_fn)`` after each unit of work (an edge test, an epoch).
``step`` writes ``state_fn()`` atomically every ``every_steps`` steps or ``every_seconds`` seconds,
and, when a stop was requested by a signal, writes it once more and raises ``RunInterrupted``.
Methods never see signals, and an interrupted step is never half-recorded: the state is only
taken between steps.

The same file also holds a method's **finished** result when a run is stopped after its method
ended (during the evaluation, say): ``save(state, finished=True)``; the next run of the config
evaluates that result instead of running the method again (``finished()``).  Every checkpoint
records the method's time so far (``method_s``), so a resumed run reports the method's total time.
A checkpoint that cannot be read (a truncated file) raises ``CheckpointUnreadable``: one line that
names the file and says how to start over.
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .files import atomic_write
from .signals import Interrupted

CHECKPOINT = "checkpoint.pt"
log = logging.getLogger("circuitfind")


class CheckpointUnreadable(ValueError):
    """The run folder's checkpoint is damaged (a truncated file) or not a checkpoint at all."""


class RunInterrupted(Exception):
    """The run stopped on a signal: a method after writing a final checkpoint, or the pipeline
    (``message`` says what it kept; ``resumable``: whether the next run goes on from it)."""

    def __init__(self, folder: Path, signal_name: str, steps: int, message: str | None = None,
                 resumable: bool = True):
        self.folder, self.signal_name, self.steps, self.resumable = folder, signal_name, steps, resumable
        super().__init__(message or f"interrupted by {signal_name} after {steps} steps; checkpoint saved in {folder}")


class Checkpointer:
    def __init__(self, folder: Path | None, config_hash: str, every_steps: int = 100,
                 every_seconds: float = 60.0):
        self.folder = None if folder is None else Path(folder)
        self.config_hash = config_hash
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.stop_signal: str | None = None
        self._steps_since, self._last_write, self.steps = 0, time.monotonic(), 0
        self.n_written = 0
        self.saved_steps: int | None = None  # the step of the checkpoint on disk (None: none)
        # where this run went on from: None (a fresh run), the step of the method's checkpoint, or
        # "finished" (the method's result, which this run evaluates)
        self.resumed_from: int | str | None = None
        self.earlier_method_s = 0.0  # the method's seconds in the runs before this one
        self.resumed_finished = False  # this run evaluates the finished result of an earlier one
        self._method_s, self._method_started = 0.0, None  # this run's method time (``timing``)
        self._read, self._was_read = None, False

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / CHECKPOINT

    def read(self) -> dict | None:
        """What the checkpoint file holds (read once), or None without one.  A checkpoint of another
        config is an error (resuming from it would silently mix two runs), and so is one that
        cannot be read."""
        if self._was_read or self.path is None:
            return self._read
        self._was_read = True
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or "state" not in saved:
                raise ValueError("not a circuitfind checkpoint")
        except Exception as error:  # torch words a truncated or foreign file in many ways (error.txt has it)
            raise CheckpointUnreadable(
                f"cannot read the checkpoint {self.path}: the file is truncated or damaged; start over with "
                "resume=false (or delete the file)") from error
        if saved.get("config_hash") != self.config_hash:
            raise ValueError(
                f"{self.path} belongs to a run of a different config (hash {saved.get('config_hash')}, "
                f"this one {self.config_hash}); choose another run folder or delete it"
            )
        self._read = saved
        self.saved_steps = saved.get("steps", 0)
        self.earlier_method_s = float(saved.get("method_s", 0.0))
        return saved

    def finished(self) -> dict | None:
        """The state of a method that finished before the run was stopped, or None."""
        saved = self.read()
        if saved is None or not saved.get("finished"):
            return None
        self.steps = saved.get("steps", 0)
        self.resumed_from, self.resumed_finished = "finished", True
        log.info("resuming from the method's finished result (%s, %.1f s of method time before): evaluating it",
                 self.path, self.earlier_method_s)
        return saved["state"]

    def restore(self) -> dict | None:
        """The saved state of this config's method, or None (a fresh start)."""
        saved = self.read()
        if saved is None or saved.get("finished"):
            return None
        torch.set_rng_state(saved["torch_rng"])
        self.resumed_from = self.steps = saved.get("steps", 0)
        log.info("resuming from step %d (%s, %.1f s of method time before)", self.steps, self.path,
                 self.earlier_method_s)
        return saved["state"]

    @contextmanager
    def timing(self):
        """The block is the method: its time goes into every checkpoint (``method_s``)."""
        self._method_started = time.perf_counter()
        try:
            yield
        finally:
            self._method_s += time.perf_counter() - self._method_started
            self._method_started = None

    def method_s(self) -> float:
        """The method's seconds so far: the earlier runs' and this one's."""
        running = 0.0 if self._method_started is None else time.perf_counter() - self._method_started
        return self.earlier_method_s + self._method_s + running

    def save(self, state: dict, finished: bool = False) -> None:
        if self.path is None:
            return
        saved = dict(config_hash=self.config_hash, steps=self.steps, torch_rng=torch.get_rng_state(),
                     state=state, saved_at=time.time(), method_s=self.method_s(), finished=finished)
        atomic_write(self.path, lambda tmp: torch.save(saved, tmp))
        self._steps_since, self._last_write = 0, time.monotonic()
        self.n_written += 1
        self.saved_steps = self.steps

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
        self._read, self._was_read, self.saved_steps = None, True, None

    @contextmanager
    def stop_on_signals(self, signals=(signal.SIGINT, signal.SIGTERM)):
        """Turn SIGINT/SIGTERM into a request to stop at the next step (main thread only)."""
        def request_stop(signum, frame):
            if self.stop_signal is not None:  # a second signal: stop now
                raise Interrupted(signal.Signals(signum).name)
            self.stop_signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, request_stop) for s in signals}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
