"""The patched forward pass: one run of a HookedTransformer in which every edge can be removed.

Read ``plain.py`` first: the whole maths of a circuit run, top to bottom, differentiable in the
mask, and the oracle every faster path is tested against.  ``PatchEngine`` (``patch.py``) computes
the same logits fast, with each speed-up in its own module (listed in ``patch.py``'s docstring);
``ablation.py`` builds what removed edges carry; ``model_reads.py`` is the one place that calls
into the model's modules.  ``reference.py`` computes the same thing again with TransformerLens
hooks, sharing nothing with this package but the edge names.

The maths is re-implemented from the model's weights, so ``check_supported``
(``core/architecture.py``) refuses architectures it does not cover.
"""

from ..core.architecture import UnsupportedModelError, check_supported
from .ablation import make_ablation, record_activations, shuffled_positions, zero_ablation
from .layout import gather_positions
from .patch import PatchEngine
from .placement import (ACTIVATION_DEVICES, GPU_HEADROOM_BYTES, choose_activation_device,
                        stored_activation_bytes)
from .plain import plain_forward
from .senders import Ablation, SenderCache

__all__ = ["ACTIVATION_DEVICES", "GPU_HEADROOM_BYTES", "Ablation", "PatchEngine", "SenderCache",
           "UnsupportedModelError", "check_supported", "choose_activation_device", "gather_positions",
           "make_ablation", "plain_forward", "record_activations", "shuffled_positions",
           "stored_activation_bytes", "zero_ablation"]
