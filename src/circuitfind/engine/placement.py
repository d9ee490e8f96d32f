"""Where the engine's stored activations live: on the model's device, or in host memory.

``activation_device="cpu"`` keeps the stored tensors (the ablation, a recorded run, each run's
sender buffer) in host memory and moves each slab to the model's device as it is read, at most
FETCH_BYTES at a time (``choose_activation_device`` picks it when they would not fit on the GPU).
Gradients (SP, attribution) keep their own blocks on the device.
"""

from __future__ import annotations

import math
import threading

import torch

from ..core.graph import Graph

ACTIVATION_DEVICES = ("auto", "model", "cpu")
# auto leaves this much of the GPU free for the forwards themselves (their transient tensors, the
# batched candidates' recomputed layers) beyond the stored activations.
GPU_HEADROOM_BYTES = 2 * 2**30
# Slabs moved to the model's device at once when the stored activations live on the CPU: bounds
# the extra device memory a read takes to this much, whatever the number of senders.
FETCH_BYTES = 256 * 2**20


def stored_activation_bytes(graph: Graph, cfg, n_prompts: int, n_pos: int) -> int:
    """What one engine keeps between runs, in bytes: the ablation's sender values and q/k/v, a
    recorded run (ACDC's cache: the same again, plus the residual at every stage) and one run's
    sender buffer."""
    itemsize = torch.empty((), dtype=cfg.dtype).element_size()
    slab = n_prompts * n_pos * cfg.d_model
    qkv = graph.n_layers * 3 * n_prompts * n_pos * graph.n_heads * cfg.d_head
    return itemsize * (3 * graph.n_senders * slab + 2 * qkv + (2 * graph.n_layers + 1) * slab)


def choose_activation_device(setting: str, model_device: torch.device | str, needed_bytes: int,
                             free_bytes: int | None = None) -> str:
    """``model`` or ``cpu``: where an engine keeps its stored activations.  ``auto`` keeps them on
    the model's device unless that is a GPU whose free memory (``torch.cuda.mem_get_info``, or
    ``free_bytes``) less GPU_HEADROOM_BYTES cannot hold ``needed_bytes``."""
    if setting not in ACTIVATION_DEVICES:
        raise ValueError(f"model.activation_device must be one of {', '.join(ACTIVATION_DEVICES)}, got {setting!r}")
    device = torch.device(model_device)
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "model"  # host memory: keeping a copy on the CPU would save nothing
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return "cpu" if needed_bytes > free_bytes - GPU_HEADROOM_BYTES else "model"


def fetched_weighted_sum(weights: torch.Tensor, slabs: torch.Tensor) -> torch.Tensor:
    """``weights @ slabs`` for slabs stored off the weights' device, moving at most FETCH_BYTES of
    them there at a time (on a CPU-only machine the moves are no-ops and the sum is the same)."""
    step = max(1, FETCH_BYTES // max(slabs[0].numel() * slabs.element_size(), 1)) if len(slabs) else 1
    total = None
    for first in range(0, max(len(slabs), 1), step):
        part = weights[:, first:first + step] @ slabs[first:first + step].to(weights.device).flatten(1)
        total = part if total is None else total + part
    return total


def fetched_sum(slabs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``slabs.sum(0)`` on ``device`` for slabs stored elsewhere, FETCH_BYTES at a time."""
    step = max(1, FETCH_BYTES // max(slabs[0].numel() * slabs.element_size(), 1)) if len(slabs) else 1
    total = None
    for first in range(0, max(len(slabs), 1), step):
        part = slabs[first:first + step].to(device).sum(0)
        total = part if total is None else total + part
    return total


_SCRATCH = threading.local()  # see Storage.body_buffer


class Storage:
    """Moves between the model's ``device`` and where stored tensors live (``activation_device``:
    ``model``, its device, or ``cpu``)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, activation_device: str = "model"):
        if activation_device not in ("model", "cpu"):
            raise ValueError(f"activation_device must be model or cpu, got {activation_device!r}")
        self.device, self.dtype, self.activation_device = device, dtype, activation_device
        self.offload = activation_device == "cpu"
        self.storage = torch.device("cpu") if self.offload else device

    def fetch(self, stored: torch.Tensor) -> torch.Tensor:
        """A stored tensor on the model's device (a no-op unless activations live on the CPU)."""
        return stored.to(self.device) if self.offload else stored

    def store(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` where stored tensors live."""
        return x.to(self.storage) if self.offload else x

    def summed(self, stored: torch.Tensor) -> torch.Tensor:
        """``stored.sum(0)`` on the model's device."""
        return fetched_sum(stored, self.device) if self.offload else stored.sum(0)

    def body_buffer(self, n: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Scratch space for the senders a run recomputes and does not keep, reused between runs
        (a fresh allocation per edge test would cost page faults on every slab) and shared by the
        engines of one thread (the validation and test engines: GPT-2's is 0.7 GB on IOI).  A run
        finishes before the next one starts, so they never hold it at the same time."""
        return _reused("buffers", (self.storage, self.dtype), (n, batch, *like.shape[1:]), self.storage, self.dtype)

    def scratch(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Scratch space ``name`` of ``shape`` on the model's device, reused between calls of one
        thread (a forward's intermediate slabs: a fresh allocation of a large tensor costs a page
        fault on every page it writes, more than the product that fills it).  Its contents are the
        caller's until the next call with the same name."""
        return _reused("scratch", (name, self.device, self.dtype), shape, self.device, self.dtype)


def _reused(table: str, key: tuple, shape: tuple[int, ...], device, dtype: torch.dtype) -> torch.Tensor:
    """A view of ``shape`` into this thread's tensor ``key`` of ``table``, grown when too small."""
    buffers = _SCRATCH.__dict__.setdefault(table, {})
    held = buffers.get(key)
    if held is None or held.numel() < math.prod(shape):
        held = buffers[key] = torch.empty(math.prod(shape), device=device, dtype=dtype)
    return held[:math.prod(shape)].view(shape)
