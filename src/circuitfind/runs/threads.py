"""How many CPU threads torch may use for one run (the ``threads`` setting).

Torch starts one intra-op thread per core.  On a tiny model (tracr, a few thousand parameters;
``induction_2l``, a quarter of a million) every op is a few microseconds of work, and splitting it
over threads costs more in synchronisation than it saves; on a machine shared with other jobs the
threads also wait for each other's cores.  Measured on this project's 2-core machine under load:
SP on tracr-reverse ran 2.35 steps/s with torch's default and 44.7 steps/s with one thread.  Big
models (GPT-2's 124M parameters) do gain from more threads.  So ``threads=auto`` (the default)
uses one thread for models below ``SMALL_MODEL_PARAMETERS`` and torch's default above; an integer
sets the count.  The count is restored when the run ends, so calling ``pipeline.run`` from a notebook
leaves torch as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

SMALL_MODEL_PARAMETERS = 2_000_000


def choose_threads(setting: str | int, n_parameters: int, default: int) -> int:
    """The thread count for a model of ``n_parameters`` (``default``: torch's own count)."""
    if setting == "auto":
        return 1 if n_parameters < SMALL_MODEL_PARAMETERS else default
    return int(setting)


@contextmanager
def torch_threads(setting: str | int, model: torch.nn.Module) -> Iterator[dict]:
    """Run the block with the chosen thread count; yields what to record in the summary."""
    before = torch.get_num_threads()
    n_parameters = sum(p.numel() for p in model.parameters())
    used = choose_threads(setting, n_parameters, before)
    torch.set_num_threads(used)
    try:
        yield dict(setting=setting, used=used, torch_default=before, model_parameters=n_parameters)
    finally:
        torch.set_num_threads(before)
