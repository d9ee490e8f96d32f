"""Where a run's time goes: each phase (model, caches, method, evaluation, drawing, writing) is
announced when it starts, so no long phase is silent, and timed, for ``timings`` in summary.json."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("circuitfind")


class Phases:
    """``with phases("model", "building the model"): ...`` logs the start (when ``progress``) and
    adds the phase's wall time in seconds to ``seconds``."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.stopped_in: tuple[str, str] | None = None  # the phase an exception (Ctrl-C) left

    @contextmanager
    def __call__(self, name: str, doing: str) -> Iterator[None]:
        if self.progress:
            log.info("%s ...", doing)
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.stopped_in = self.stopped_in or (name, doing)
            raise
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)

    def line(self) -> str:
        """``model 2.1 s, method 0.4 s, ...``: the console's account of the run's time."""
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.seconds.items())
