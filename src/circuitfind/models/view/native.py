"""TransformerLens 4's native bridges (``boot_native``: TransformerLens' own transformer, no Hugging
Face model) as the model view, and TransformerLens 3 weights (circuitfind's shipped tracr programs
and ``induction_2l``) loaded into one.

TransformerLens 3 weights have no Hugging Face architecture (tracr's models have no norms,
bidirectional attention, heads narrower than d_model / n_heads and their own output vocabulary),
but 4.3's native model has each of these, and ``convert_tl_checkpoint`` maps a HookedTransformer
state dict onto it; its logits are then the HookedTransformer's.  Two things it lacks are added:

- the unembedding bias: the native head is a bias-free ``nn.Linear`` and ``induction_2l``'s b_U is
  not zero, so the head is built with a bias before the bridge wraps the model;
- the per-head hooks the hook reference patches: the native attention bridge refuses
  ``set_use_split_qkv_input`` and ``set_use_attn_result`` (NotImplementedError).  Here, as
  TransformerLens 3 does with those switches on, ``hook_q_input``/``hook_k_input``/``hook_v_input``
  hand each head its own copy of the block's input [batch, pos, head, d_model], and the head's
  query/key/value is recomputed from it (the block's ``ln1``, then the head's W and b) in place of
  the bridge's ``q``/``k``/``v`` outputs; ``attn.hook_result`` hands over each head's output
  [batch, pos, head, d_model] (z times its W_O) and the attention output becomes their sum plus b_O.

The native rotary embedding rotates adjacent pairs (0, 1), (2, 3), ... with its own cos/sin table and
``cfg.rotary_base``: ``apply_rotary`` here does the same.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from . import float64
from .tl4 import AttentionView, BridgeView, NormView, _PositionalEmbedding

NATIVE = "TransformerLensNative"


def is_native(bridge) -> bool:
    return type(bridge.original_model).__name__ == "NativeModel"


def native_model_view(tl3_cfg: dict, state_dict: dict | None, *, seed: int = 0,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "NativeView":
    """A native bridge of the HookedTransformer config ``tl3_cfg`` (its fields), holding ``state_dict``
    (HookedTransformer's names and shapes) or, when None, TransformerLens' seeded initialisation;
    float64 weights computed in float64 (``float64.compute_in_float64``)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native.init import initialize_native_model
    from transformer_lens.model_bridge.sources.native.model import NativeModel
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    # a None field takes the native default, but for the norm: None is no norm (tracr's models)
    fields = {k: v for k, v in tl3_cfg.items() if (v is not None or k == "normalization_type")
              and k not in ("model_name", "init_weights", "default_prepend_bos", "device", "dtype")}
    fields.setdefault("normalization_type", "LN")
    fields.setdefault("attention_dir", "causal")
    cfg = TransformerBridgeConfig.from_dict(dict(fields, architecture=NATIVE))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NativeModel(cfg)
        model.head = torch.nn.Linear(cfg.d_model, cfg.d_vocab_out if cfg.d_vocab_out > 0 else cfg.d_vocab)
        if state_dict is None:
            initialize_native_model(model, cfg)
            torch.nn.init.zeros_(model.head.bias)
    model = model.to(device=device, dtype=dtype)
    bridge = build_bridge_from_module(model, architecture=NATIVE, tl_config=cfg, dtype=dtype, device=device,
                                      model_name=tl3_cfg.get("model_name") or "native")
    if state_dict is not None:
        converted = convert_tl_checkpoint({k: v.to(dtype) for k, v in state_dict.items()}, cfg)
        if "unembed.bias" not in converted:  # a HookedTransformer saved without b_U
            converted["unembed.bias"] = torch.zeros_like(model.head.bias)
        bridge.load_state_dict(converted, strict=True)
    bridge.eval().requires_grad_(False)
    float64.compute_in_float64(bridge)
    view = NativeView(bridge)
    view.cfg.model_name = tl3_cfg.get("model_name") or view.cfg.model_name
    view.cfg.default_prepend_bos = bool(tl3_cfg.get("default_prepend_bos", True))
    return view


class NativeAttentionView(AttentionView):
    """The native attention's maths: its scale (``cfg.attn_scale`` or sqrt(d_head)), soft-cap and
    adjacent-pair rotary."""

    def __init__(self, view: "NativeView", layer: int):
        super().__init__(view, layer)
        self.scaling = 1.0 / float(self.hf.scale)
        cap = float(getattr(self.hf, "attn_scores_soft_cap", -1.0))
        self.softcap = cap if cap > 0 else None
        self.window = None
        self.softmax_dtype = None

    def apply_rotary(self, x: torch.Tensor) -> torch.Tensor:
        rotary = self.hf.rotary  # [n_ctx, rotary_dim] tables, each frequency twice: c0, c0, c1, c1, ...
        rot, n_pos = rotary.rotary_dim, x.shape[1]
        cos = rotary.cos_cached[:n_pos].to(x.dtype)[None, :, None]
        sin = rotary.sin_cached[:n_pos].to(x.dtype)[None, :, None]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        turned = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)  # (x0, x1) -> (-x1, x0)
        return torch.cat((x_rot * cos + turned * sin, x_pass), dim=-1)


class NativeBlockView:
    def __init__(self, view: "NativeView", layer: int):
        children = dict(view.bridge.blocks[layer].named_children())
        self.ln1 = _norm(children["ln1"].original_component)
        self.ln2 = _norm(children["ln2"].original_component) if "ln2" in children else None
        self.attn = NativeAttentionView(view, layer)
        self.mlp = _MLP(children["mlp"].original_component) if "mlp" in children else None


class _MLP(torch.nn.Module):
    """The native MLP (called as it is) with TransformerLens 3's weight names, which the tracr
    ground-truth derivation reads."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        if hasattr(module, "fc_in"):
            self.W_in, self.b_in = module.fc_in.weight.detach().T, module.fc_in.bias.detach()
            self.W_out, self.b_out = module.fc_out.weight.detach().T, module.fc_out.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _norm(module: torch.nn.Module) -> torch.nn.Module:
    return module if isinstance(module, torch.nn.Identity) else NormView(module, "")


class NativeView(BridgeView):
    """A native ``TransformerBridge`` as the model view, with TransformerLens 3's per-head q/k/v input
    and result hooks (see the module docstring)."""

    def __init__(self, bridge):  # not BridgeView's: that one reads a Hugging Face model, this has none
        self.bridge = bridge
        self.hf = bridge.original_model
        self.model_type = NATIVE
        self.tokenizer = getattr(bridge, "tokenizer", None)
        self.W_E = bridge.embed.original_component.weight.detach()
        self.cfg = _native_config(bridge)
        self.embed = bridge.embed.original_component
        children = dict(bridge.named_children())
        self.pos_embed = (_PositionalEmbedding(children["pos_embed"].original_component)
                          if self.cfg.positional_embedding_type == "standard" else None)
        self.W_pos = self.pos_embed.W_pos if self.pos_embed is not None else None
        ln_final = bridge.ln_final.original_component
        self.ln_final = None if isinstance(ln_final, torch.nn.Identity) else NormView(ln_final, "")
        head = bridge.unembed.original_component
        self.unembed = SimpleNamespace(
            W_U=head.weight.detach().T,
            b_U=head.bias.detach() if head.bias is not None else self.W_E.new_zeros(head.weight.shape[0]))
        self.W_U = self.unembed.W_U
        self._rotary = None
        self.training = False
        self.blocks = [NativeBlockView(self, layer) for layer in range(self.cfg.n_layers)]

    @property
    def hook_dict(self) -> dict:
        """As the bridge view's, with hook_resid_mid.  The per-head input and result hooks and
        hook_mlp_in are listed whatever their switches; as in TransformerLens 3 they fire only while
        those are on."""
        hooks = dict(super().hook_dict)
        for layer in range(self.cfg.n_layers):
            if f"blocks.{layer}.hook_resid_mid" in self.bridge.hook_dict:
                hooks[f"blocks.{layer}.hook_resid_mid"] = self.bridge.hook_dict[f"blocks.{layer}.hook_resid_mid"]
        return hooks

    def set_use_split_qkv_input(self, value: bool) -> None:
        self.cfg.use_split_qkv_input = value

    def set_use_attn_result(self, value: bool) -> None:
        self.cfg.use_attn_result = value

    def _translated(self, fwd_hooks):
        """The bridge's hooks for ``fwd_hooks`` (TransformerLens 3's names), with the per-head input and
        result hooks built from the bridge's own when their switches are on."""
        per_head = {}  # (layer, "q"|"k"|"v"|"result") -> [(name, hook function)]
        plain = []
        for name, fn in fwd_hooks:
            which = self._per_head_hook(name)
            if which == "off":  # its switch is off: it does not fire
                continue
            if which is None:
                plain.append((name, fn))
            else:
                per_head.setdefault(which, []).append((name, fn))
        replaced = []  # run before the hooks on the same points (hook_q etc. see the recomputed q)
        captures = []  # run after them (the block input and z as the hooks left them)
        seen: dict[str, torch.Tensor] = {}
        for layer in sorted({layer for layer, _ in per_head}):
            captures += [(f"blocks.{layer}.hook_in", _keep(seen, f"{layer}.resid_pre")),
                         (f"blocks.{layer}.attn.o.hook_in", _keep(seen, f"{layer}.z"))]
            for which in "qkv":
                if (layer, which) in per_head:
                    replaced.append((f"blocks.{layer}.attn.{which}.hook_out",
                                     self._head_inputs(seen, layer, which, per_head[layer, which])))
            if (layer, "result") in per_head:
                replaced.append((f"blocks.{layer}.attn.o.hook_out",
                                 self._head_results(seen, layer, per_head[layer, "result"])))
        return replaced + super()._translated(plain) + captures

    def _per_head_hook(self, name) -> tuple[int, str] | str | None:
        """(layer, which) for a per-head input or result hook whose switch is on, "off" for one whose
        switch is off, None for any other hook."""
        parts = name.split(".") if isinstance(name, str) else []
        if len(parts) < 3 or parts[0] != "blocks":
            return None
        rest = ".".join(parts[2:])
        if self.cfg.use_split_qkv_input and rest in ("hook_q_input", "hook_k_input", "hook_v_input"):
            return int(parts[1]), rest[len("hook_")]
        if self.cfg.use_attn_result and rest == "attn.hook_result":
            return int(parts[1]), "result"
        if rest in ("hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_result") or (
                rest == "hook_mlp_in" and not self.cfg.use_hook_mlp_in):
            return "off"
        return None

    def _head_inputs(self, seen, layer: int, which: str, fns):
        block, attn = self.blocks[layer], self.blocks[layer].attn
        W, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn._W_K, attn._b_K), "v": (attn._W_V, attn._b_V)}[which]

        def recompute(value, hook):
            resid = seen[f"{layer}.resid_pre"]
            x = resid[:, :, None].expand(-1, -1, W.shape[0], -1).clone()  # [batch, pos, head, d_model]
            for name, fn in fns:
                out = fn(x, SimpleNamespace(name=name, bridge_hook=hook))
                x = x if out is None else out
            return torch.einsum("bphd,hde->bphe", block.ln1(x), W) + b
        return recompute

    def _head_results(self, seen, layer: int, fns):
        attn = self.blocks[layer].attn

        def recompute(value, hook):
            result = torch.einsum("bphe,hed->bphd", seen[f"{layer}.z"], attn.W_O)  # [batch, pos, head, d_model]
            for name, fn in fns:
                out = fn(result, SimpleNamespace(name=name, bridge_hook=hook))
                result = result if out is None else out
            return result.sum(2) + attn.b_O
        return recompute


def _keep(seen: dict, key: str):
    def keep(value, hook):
        seen[key] = value
        return value
    return keep


def _native_config(bridge) -> SimpleNamespace:
    """TransformerLens 3's config fields for a native bridge (its cfg has most of them)."""
    bcfg = bridge.cfg
    cfg = SimpleNamespace(**dict(vars(bcfg)))
    n_kv = getattr(bcfg, "n_key_value_heads", None)
    cfg.n_key_value_heads = None if n_kv in (None, bcfg.n_heads) else int(n_kv)
    cfg.original_architecture = NATIVE
    cfg.model_name = getattr(bcfg, "model_name", None) or NATIVE
    first = next(bridge.original_model.parameters())
    cfg.dtype, cfg.device = first.dtype, first.device
    cfg.attention_dir = bcfg.attention_dir or "causal"
    cfg.attn_only = bool(bcfg.attn_only)
    cfg.use_normalization_before_and_after = cfg.use_local_attn = cfg.parallel_attn_mlp = False
    cfg.window_size = cfg.attn_types = None
    cfg.d_vocab_out = int(bcfg.d_vocab_out) if bcfg.d_vocab_out > 0 else int(bcfg.d_vocab)
    if cfg.positional_embedding_type == "rotary":
        cfg.rotary_dim = int(bcfg.rotary_dim or bcfg.d_head)
        cfg.rotary_base = float(bcfg.rotary_base)
        cfg.rotary_adjacent_pairs = True  # NativeRotary rotates (0, 1), (2, 3), ... whatever the cfg says
    cfg.use_split_qkv_input = cfg.use_attn_result = False
    cfg.use_hook_mlp_in = bool(getattr(bcfg, "use_hook_mlp_in", False))
    return cfg
