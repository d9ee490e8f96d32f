"""The TransformerLens 4.x backend: a ``TransformerBridge`` over a Hugging Face causal LM, seen as the
model view the engine and the hook reference read (see ``__init__``).

What the bridge offers as TransformerLens 3 did is passed on (the cfg sizes, ``W_Q``, ``W_O``,
ungrouped ``W_K``/``W_V``, the MLP weights, the fine-grained hooks and ``set_use_*``).  What differs
is converted here:

- grouped-query ``W_K``/``W_V`` are [n_kv_heads, d_model, d_head] (TransformerLens 3's ``_W_K``):
  they are ``_W_K``/``_W_V`` here, and ``W_K``/``W_V`` repeat them per query head;
- a bias-free model's biases are None: zeros here;
- ``cfg.rotary_dim`` is None for full rotary, ``cfg.rotary_base`` stays 10000 whatever the Hugging
  Face config's ``rope_theta``, Gemma-2's post-norms, local attention and window are not in the
  cfg: each is read from the Hugging Face model (``_view_config``), never from the bridge's cfg;
- the attention bridges lack ``apply_rotary``, ``calculate_attention_scores``, ``apply_causal_mask``
  and ``calculate_z_scores``: ``AttentionView`` computes them from the Hugging Face attention
  module's own settings (``scaling``, ``attn_logit_softcapping``, ``sliding_window``,
  ``rotary_ndims``) and its model's rotary embedding, with the softmax in the dtype the bridge's
  attention takes it in (float32 for Llama, Qwen2 and Gemma-2, the model's for GPT-2 and GPT-NeoX;
  float64 for float64 weights in the bridges circuitfind builds, see ``float64``);
- norms are the Hugging Face modules themselves (``NormView`` adds what the engine's fast gradient
  path reads: the kind, the effective weight and bias, eps);
- hooks fire under the bridge's canonical names (``blocks.0.hook_resid_pre`` is ``blocks.0.hook_in``;
  Gemma-2's ``hook_attn_out`` is its ``ln1_post.hook_out``): ``run_with_hooks`` and friends take
  TransformerLens 3's names and hand each hook function those names back.

Compatibility mode (folded, centred weights) is not used: the view reads the Hugging Face weights
as they are, and its logits are the bridge's.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from . import float64

# Hugging Face model types whose RMSNorm multiplies by (1 + weight).
ONE_PLUS_WEIGHT_NORMS = {"gemma", "gemma2", "gemma3", "gemma3_text"}


def is_bridge(model) -> bool:
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


class NormView(torch.nn.Module):
    """A Hugging Face norm module (called as it is), with what the engine's fast layer-norm gradient
    reads: ``norm_kind`` (``LayerNorm`` or ``RMSNorm``), ``w``, ``b`` and ``eps``."""

    def __init__(self, module: torch.nn.Module, model_type: str):
        super().__init__()
        self.module = module
        weight = getattr(module, "weight", None)
        eps = getattr(module, "eps", None)
        if eps is None:
            eps = getattr(module, "variance_epsilon", 1e-5)
        self.eps = float(eps)
        if isinstance(module, torch.nn.LayerNorm):
            self.norm_kind = "LayerNorm"
            self.w = weight if weight is not None else torch.ones(module.normalized_shape)
            self.b = module.bias if module.bias is not None else torch.zeros_like(self.w)
        elif "RMSNorm" in type(module).__name__ and weight is not None:
            self.norm_kind = "RMSNorm"
            self.w = 1 + weight if model_type in ONE_PLUS_WEIGHT_NORMS else weight
        else:  # any other module: the engine differentiates the module itself
            self.norm_kind = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class AttentionView:
    """One layer's attention: the bridge's weights in TransformerLens 3's layout, and the maths the
    engine runs between its patched queries/keys/values and the heads' outputs."""

    def __init__(self, view: "BridgeView", layer: int):
        bridge_attn = view.bridge.blocks[layer].attn
        hf_attn = bridge_attn.original_component
        cfg = view.cfg
        self.layer, self.view, self.hf = layer, view, hf_attn
        H, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        n_kv = cfg.n_key_value_heads or H
        like = view.W_E

        def weight(name, heads, shape):
            value = getattr(bridge_attn, name)
            return like.new_zeros(heads, *shape) if value is None else value.detach().reshape(heads, *shape)

        self.W_Q = weight("W_Q", H, (d_model, d_head))
        self.W_O = weight("W_O", H, (d_head, d_model))
        self.b_Q = weight("b_Q", H, (d_head,))
        b_O = bridge_attn.b_O
        self.b_O = like.new_zeros(d_model) if b_O is None else b_O.detach().reshape(d_model)
        self._W_K, self._W_V = weight("W_K", n_kv, (d_model, d_head)), weight("W_V", n_kv, (d_model, d_head))
        self._b_K, self._b_V = weight("b_K", n_kv, (d_head,)), weight("b_V", n_kv, (d_head,))
        repeat = H // n_kv
        self.W_K, self.W_V = (self._W_K.repeat_interleave(repeat, 0), self._W_V.repeat_interleave(repeat, 0))
        self.b_K, self.b_V = (self._b_K.repeat_interleave(repeat, 0), self._b_V.repeat_interleave(repeat, 0))
        self.repeat = repeat
        scaling = getattr(hf_attn, "scaling", None)
        self.scaling = float(scaling) if scaling is not None else d_head ** -0.5
        cap = getattr(hf_attn, "attn_logit_softcapping", None)
        self.softcap = float(cap) if cap else None
        window = getattr(hf_attn, "sliding_window", None)
        self.window = int(window) if window else None
        # the bridge's own attention takes the softmax in float32 where it rebuilds attention around
        # position embeddings (Llama, Qwen2, Gemma-2; float64 stays float64 once float64.compute_in_float64
        # marked it), in the model's dtype where it splits a fused q/k/v projection (GPT-2, GPT-NeoX):
        # the view takes it where its bridge does
        from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
            PositionEmbeddingsAttentionBridge)

        self.softmax_dtype = torch.float32 if isinstance(bridge_attn, PositionEmbeddingsAttentionBridge) else None
        self.softmax_keeps_float64 = bool(getattr(bridge_attn, float64.MARK, False))

    # the engine's attention maths, in TransformerLens 3's shapes ([batch, pos, head, d_head])
    def apply_rotary(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self.view.rotary_cos_sin(x.shape[1], x)  # [pos, rotary_dim]
        rot = cos.shape[-1]
        cos, sin = cos[None, :, None], sin[None, :, None]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        rotated = torch.cat((-x_rot[..., rot // 2:], x_rot[..., :rot // 2]), dim=-1)  # rotate_half
        return torch.cat(((x_rot * cos) + (rotated * sin), x_pass), dim=-1)

    def calculate_attention_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """[batch, head, query pos, key pos]; shared key/value heads repeated for their query heads."""
        if self.repeat > 1:
            k = k.repeat_interleave(self.repeat, dim=2)
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return scores

    def apply_causal_mask(self, scores: torch.Tensor) -> torch.Tensor:
        n_q, n_k = scores.shape[-2:]
        query = torch.arange(n_q, device=scores.device)[:, None] + (n_k - n_q)
        key = torch.arange(n_k, device=scores.device)[None, :]
        allowed = key <= query
        if self.window is not None:
            allowed = allowed & (query - key < self.window)
        return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        if self.softmax_dtype is None or (self.softmax_keeps_float64 and scores.dtype == torch.float64):
            return F.softmax(scores, dim=-1)
        return F.softmax(scores, dim=-1, dtype=self.softmax_dtype).to(scores.dtype)

    def calculate_z_scores(self, v: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        """z [batch, pos, head, d_head] from values [batch, pos, kv head, d_head] and the pattern."""
        if self.repeat > 1:
            v = v.repeat_interleave(self.repeat, dim=2)
        return torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2)


class BlockView:
    def __init__(self, view: "BridgeView", layer: int):
        bridge_block = view.bridge.blocks[layer]
        children = dict(bridge_block.named_children())
        self.ln1 = NormView(children["ln1"].original_component, view.model_type)
        self.ln2 = NormView(children["ln2"].original_component, view.model_type) if "ln2" in children else None
        if "ln1_post" in children:
            self.ln1_post = NormView(children["ln1_post"].original_component, view.model_type)
            self.ln2_post = NormView(children["ln2_post"].original_component, view.model_type)
        self.attn = AttentionView(view, layer)
        self.mlp = children["mlp"].original_component if "mlp" in children else None


class BridgeView:
    """A ``TransformerBridge`` as the model view (see the module docstring)."""

    is_model_view = True
    backend = "tl4"

    def __init__(self, bridge):
        self.bridge = bridge
        self.hf = bridge.original_model
        self.hf_config = self.hf.config
        self.model_type = getattr(self.hf_config, "model_type", "")
        self.tokenizer = getattr(bridge, "tokenizer", None)
        self.W_E = bridge.embed.original_component.weight.detach()
        self.cfg = _view_config(bridge, self.hf)
        self.embed = bridge.embed.original_component
        children = dict(bridge.named_children())
        self.pos_embed = _PositionalEmbedding(children["pos_embed"].original_component) \
            if self.cfg.positional_embedding_type == "standard" else None
        self.ln_final = NormView(bridge.ln_final.original_component, self.model_type) \
            if "ln_final" in children else None
        lm_head = bridge.unembed.original_component
        self.unembed = SimpleNamespace(
            W_U=lm_head.weight.detach().T,
            b_U=(lm_head.bias.detach() if getattr(lm_head, "bias", None) is not None
                 else self.W_E.new_zeros(lm_head.weight.shape[0])))
        self._rotary = _rotary_module(self.hf) if self.cfg.positional_embedding_type == "rotary" else None
        self._cos_sin: dict = {}
        self.blocks = [BlockView(self, layer) for layer in range(self.cfg.n_layers)]

    # ---- what torch and the tasks call on a model ------------------------------------------
    def __call__(self, tokens: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.bridge(tokens, *args, **kwargs)

    def parameters(self):
        return self.bridge.parameters()

    def named_parameters(self):
        return self.bridge.named_parameters()

    def eval(self):
        self.bridge.eval()
        return self

    def requires_grad_(self, requires_grad: bool = True):
        self.bridge.requires_grad_(requires_grad)
        return self

    def rotary_cos_sin(self, n_pos: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's rotary cos and sin for positions 0..n_pos-1, [n_pos, rotary_dim] in ``like``'s dtype."""
        key = (n_pos, like.dtype, like.device)
        if key not in self._cos_sin:
            positions = torch.arange(n_pos, device=like.device)[None]
            cos, sin = self._rotary(like, positions)
            self._cos_sin[key] = (cos[0].to(like.dtype), sin[0].to(like.dtype))
        return self._cos_sin[key]

    # ---- hooks by TransformerLens 3's names ------------------------------------------------
    def bridge_hook_name(self, name: str) -> str:
        parts = name.split(".")
        if name == "hook_embed":
            return "embed.hook_out"
        if name == "hook_pos_embed":
            return "pos_embed.hook_out"
        if parts[0] == "blocks":
            layer, rest = parts[1], ".".join(parts[2:])
            post = self.cfg.use_normalization_before_and_after
            mapped = {
                "hook_resid_pre": "hook_in", "hook_resid_post": "hook_out", "hook_mlp_in": "hook_mlp_in",
                "hook_q_input": "attn.hook_q_input", "hook_k_input": "attn.hook_k_input",
                "hook_v_input": "attn.hook_v_input", "attn.hook_q": "attn.q.hook_out",
                "attn.hook_k": "attn.k.hook_out", "attn.hook_v": "attn.v.hook_out",
                "attn.hook_z": "attn.o.hook_in", "attn.hook_result": "attn.hook_result",
                "attn.hook_pattern": "attn.hook_pattern", "attn.hook_attn_scores": "attn.hook_attn_scores",
                "hook_attn_out": "ln1_post.hook_out" if post else "attn.hook_out",
                "hook_mlp_out": "ln2_post.hook_out" if post else "mlp.hook_out",
            }.get(rest)
            if mapped is not None:
                return f"blocks.{layer}.{mapped}"
        return name

    @property
    def hook_dict(self) -> dict:
        """TransformerLens 3's names of the hooks this model fires (a rotary model has no hook_pos_embed)."""
        names = ["hook_embed"] + (["hook_pos_embed"] if self.cfg.positional_embedding_type == "standard" else [])
        for l in range(self.cfg.n_layers):
            names += [f"blocks.{l}.{n}" for n in (
                "hook_resid_pre", "hook_resid_post", "hook_q_input", "hook_k_input", "hook_v_input",
                "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_result",
                "attn.hook_pattern", "attn.hook_attn_scores", "hook_attn_out")]
            if not self.cfg.attn_only:
                names += [f"blocks.{l}.hook_mlp_in", f"blocks.{l}.hook_mlp_out"]
        bridge_hooks = self.bridge.hook_dict
        return {n: bridge_hooks[self.bridge_hook_name(n)] for n in names if self.bridge_hook_name(n) in bridge_hooks}

    def _translated(self, fwd_hooks):
        translated = []
        for name, fn in fwd_hooks:
            if callable(name):
                raise TypeError("the model view takes hooks by name")

            def named(value, hook, _fn=fn, _name=name):
                return _fn(value, SimpleNamespace(name=_name, bridge_hook=hook))
            translated.append((self.bridge_hook_name(name), named))
        return translated

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks=(), **kwargs):
        return self.bridge.run_with_hooks(tokens, fwd_hooks=self._translated(fwd_hooks), **kwargs)

    @contextmanager
    def hooks(self, fwd_hooks=()):
        with self.bridge.hooks(fwd_hooks=self._translated(fwd_hooks)):
            yield self

    def run_with_cache(self, tokens: torch.Tensor, names_filter=None):
        """(logits, {TransformerLens 3 name: activation}) for the hooks ``names_filter`` selects."""
        if isinstance(names_filter, str):
            wanted = [names_filter]
        elif callable(names_filter):
            wanted = [n for n in self.hook_dict if names_filter(n)]
        else:
            wanted = list(names_filter) if names_filter is not None else list(self.hook_dict)
        cache: dict[str, torch.Tensor] = {}

        def save(value, hook):
            cache[hook.name] = value.detach()
        logits = self.run_with_hooks(tokens, fwd_hooks=[(n, save) for n in wanted])
        return logits, cache

    def set_use_split_qkv_input(self, value: bool) -> None:
        self.bridge.set_use_split_qkv_input(value)
        self.cfg.use_split_qkv_input = value

    def set_use_attn_result(self, value: bool) -> None:
        self.bridge.set_use_attn_result(value)
        self.cfg.use_attn_result = value

    def set_use_hook_mlp_in(self, value: bool) -> None:
        self.bridge.set_use_hook_mlp_in(value)
        self.cfg.use_hook_mlp_in = value


class _PositionalEmbedding:
    """``pos_embed(tokens)`` as TransformerLens 3 has it: the learned positions 0..pos-1 per prompt."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.W_pos = module.weight.detach()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        return self.module(positions)[None].expand(tokens.shape[0], -1, -1)


def _rotary_module(hf_model) -> torch.nn.Module:
    """The Hugging Face model's rotary embedding (called with a dtype-carrying tensor and position ids)."""
    for _, module in hf_model.named_modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            return module
    raise ValueError(f"{type(hf_model).__name__}: no rotary embedding module found")


def _view_config(bridge, hf_model) -> SimpleNamespace:
    """TransformerLens 3's config fields for the bridge's model, with what the bridge's cfg gets wrong
    or leaves out read from the Hugging Face model."""
    bcfg, hf_cfg = bridge.cfg, hf_model.config
    fields = dict(vars(bcfg)) if hasattr(bcfg, "__dict__") else {}
    cfg = SimpleNamespace(**fields)
    n_heads = int(bcfg.n_heads)
    d_head = int(bcfg.d_head)
    n_kv = getattr(bcfg, "n_key_value_heads", None)
    cfg.n_key_value_heads = None if n_kv in (None, n_heads) else int(n_kv)
    cfg.original_architecture = getattr(bcfg, "architecture", None) or type(hf_model).__name__
    cfg.model_name = getattr(bcfg, "model_name", None) or cfg.original_architecture
    cfg.dtype = next(hf_model.parameters()).dtype
    cfg.attention_dir = getattr(bcfg, "attention_dir", "causal") or "causal"
    cfg.attn_only = bool(getattr(bcfg, "attn_only", False))
    layer_types = list(getattr(hf_cfg, "layer_types", None) or [])
    cfg.use_normalization_before_and_after = any(
        n == "ln1_post" for n, _ in bridge.blocks[0].named_children())
    window = getattr(hf_cfg, "sliding_window", None)
    cfg.use_local_attn = bool(window) and "sliding_attention" in layer_types
    cfg.window_size = int(window) if cfg.use_local_attn else None
    cfg.attn_types = ["local" if t == "sliding_attention" else "global" for t in layer_types] or None
    cap = getattr(hf_cfg, "final_logit_softcapping", None)
    cfg.output_logits_soft_cap = float(cap) if cap else -1.0
    attn_cap = getattr(hf_cfg, "attn_logit_softcapping", None)
    cfg.attn_scores_soft_cap = float(attn_cap) if attn_cap else -1.0
    cfg.parallel_attn_mlp = bool(getattr(hf_cfg, "use_parallel_residual", False)
                                 or getattr(bcfg, "parallel_attn_mlp", False))
    if cfg.positional_embedding_type == "rotary":
        hf_attn = bridge.blocks[0].attn.original_component
        rotary_dim = getattr(hf_attn, "rotary_ndims", None) or getattr(hf_attn, "rotary_dim", None)
        cfg.rotary_dim = int(rotary_dim) if rotary_dim else d_head
        rope = getattr(hf_cfg, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        cfg.rotary_base = float(theta if theta is not None else getattr(hf_cfg, "rope_theta", 10000.0))
        # the families here rotate the two halves of each head (rotate_half); those that rotate
        # adjacent pairs in 4.3 (GPT-J, native models) have no q/k/v input hooks and are not read
        cfg.rotary_adjacent_pairs = False
    for flag in ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in"):
        setattr(cfg, flag, bool(getattr(bcfg, flag, False)))
    cfg.d_head = d_head
    cfg.eps = float(getattr(bcfg, "eps", 1e-5))
    return cfg



# ---- random Hugging Face models of the shipped families, built offline -------------------------
def hf_config(arch: dict):
    """The Hugging Face config of a model described in TransformerLens 3's config fields (``arch``, as
    ``loading.HUB_ARCHITECTURES`` writes them), for the families the configs ship: GPT-2, Pythia
    (GPT-NeoX), Qwen2, Llama and Gemma-2.  Dropout off; eager attention (the bridge's hooks need it)."""
    import transformers

    family = arch.get("original_architecture")
    L, H, d_model = int(arch["n_layers"]), int(arch["n_heads"]), int(arch["d_model"])
    d_head = int(arch.get("d_head") or d_model // H)
    d_mlp = int(arch.get("d_mlp") or 4 * d_model)
    n_kv = arch.get("n_key_value_heads") or H
    common = dict(vocab_size=int(arch["d_vocab"]), num_hidden_layers=L, num_attention_heads=H,
                  hidden_size=d_model, intermediate_size=d_mlp, max_position_embeddings=int(arch["n_ctx"]),
                  attn_implementation="eager")
    rope = {"rope_type": "default", "rope_theta": float(arch.get("rotary_base", 10000.0))}
    if family == "GPT2LMHeadModel":
        if d_head * H != d_model:
            raise ValueError(f"GPT-2 needs d_head * n_heads = d_model, got {d_head} * {H} != {d_model}")
        return transformers.GPT2Config(
            vocab_size=int(arch["d_vocab"]), n_positions=int(arch["n_ctx"]), n_embd=d_model, n_layer=L, n_head=H,
            n_inner=d_mlp, activation_function=arch.get("act_fn", "gelu_new"),
            layer_norm_epsilon=float(arch.get("eps", 1e-5)), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            attn_implementation="eager")
    if family == "GPTNeoXForCausalLM":
        if d_head * H != d_model:
            raise ValueError(f"GPT-NeoX needs d_head * n_heads = d_model, got {d_head} * {H} != {d_model}")
        rotary_dim = int(arch.get("rotary_dim") or d_head)
        return transformers.GPTNeoXConfig(
            **common, hidden_act=arch.get("act_fn", "gelu"), layer_norm_eps=float(arch.get("eps", 1e-5)),
            use_parallel_residual=bool(arch.get("parallel_attn_mlp", True)), tie_word_embeddings=False,
            rope_parameters=dict(rope, partial_rotary_factor=rotary_dim / d_head),
            attention_dropout=0.0, hidden_dropout=0.0)
    if family in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        if arch.get("use_NTK_by_parts_rope"):
            rope = dict(rope, rope_type="llama3", factor=float(arch["NTK_by_parts_factor"]),
                        low_freq_factor=float(arch["NTK_by_parts_low_freq_factor"]),
                        high_freq_factor=float(arch["NTK_by_parts_high_freq_factor"]),
                        original_max_position_embeddings=min(int(arch["NTK_original_ctx_len"]),
                                                             int(arch["n_ctx"])))
        config_class = transformers.LlamaConfig if family == "LlamaForCausalLM" else transformers.Qwen2Config
        return config_class(**common, num_key_value_heads=int(n_kv), head_dim=d_head,
                            hidden_act=arch.get("act_fn", "silu"), rms_norm_eps=float(arch.get("eps", 1e-5)),
                            rope_parameters=rope, tie_word_embeddings=False, attention_dropout=0.0)
    if family == "Gemma2ForCausalLM":
        types = arch.get("attn_types") or ["global"] * L
        layer_types = ["sliding_attention" if types[i % len(types)] == "local" else "full_attention" for i in range(L)]
        return transformers.Gemma2Config(
            **common, num_key_value_heads=int(n_kv), head_dim=d_head, hidden_activation=arch.get("act_fn", "gelu_pytorch_tanh"),
            rms_norm_eps=float(arch.get("eps", 1e-6)), rope_parameters=rope, query_pre_attn_scalar=d_head,
            sliding_window=int(arch.get("window_size") or arch["n_ctx"]), layer_types=layer_types,
            attn_logit_softcapping=arch.get("attn_scores_soft_cap"),
            final_logit_softcapping=arch.get("output_logits_soft_cap"), attention_dropout=0.0)
    raise ValueError(f"no Hugging Face family for original_architecture={family!r} under TransformerLens 4 "
                     "(GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM, Gemma2ForCausalLM)")


HF_NAMES = {"GPT2LMHeadModel": "gpt2", "GPTNeoXForCausalLM": "EleutherAI/pythia-70m",
            "LlamaForCausalLM": "meta-llama/Llama-3.2-1B", "Qwen2ForCausalLM": "Qwen/Qwen2.5-0.5B",
            "Gemma2ForCausalLM": "google/gemma-2-2b"}


def random_bridge(arch: dict, seed: int, dtype: torch.dtype = torch.float32, tokenizer=None,
                  device: str | torch.device = "cpu") -> BridgeView:
    """A TransformerBridge over a Hugging Face model of ``arch`` with seeded random weights (its
    architecture's own initialisation), built offline, as a model view."""
    import transformers

    config = hf_config(arch)
    model_class = getattr(transformers, arch["original_architecture"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = model_class(config)
    return bridge_view(hf_model.to(device=device, dtype=dtype), HF_NAMES[arch["original_architecture"]],
                       tokenizer, dtype)


def bridge_view(hf_model, name: str, tokenizer=None, dtype: torch.dtype | None = None) -> BridgeView:
    """A Hugging Face model wrapped in a TransformerBridge (``boot_transformers(hf_model=...)``, no hub
    call: the tokenizer is ``tokenizer``, or GPT-2's from ``loading.gpt2_tokenizer``), frozen, computing
    float64 weights in float64 (``float64.compute_in_float64``), as a view."""
    from transformer_lens.model_bridge import TransformerBridge

    if tokenizer is None:
        from ..hub import gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
    dtype = dtype or next(hf_model.parameters()).dtype
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model.eval(), tokenizer=tokenizer, dtype=dtype)
    bridge.eval().requires_grad_(False)
    float64.compute_in_float64(bridge)
    return BridgeView(bridge)


def pretrained_bridge(repo: str, device, dtype: torch.dtype) -> BridgeView:
    """The real weights of hub ``repo`` through ``boot_transformers`` (its cache, or the hub), float64
    kept float64 (``float64.compute_in_float64``), as a view."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(repo, device=str(device), dtype=dtype)
    bridge.eval().requires_grad_(False)
    float64.compute_in_float64(bridge)
    return BridgeView(bridge)


def official_name(name: str) -> str:
    """TransformerLens 4's hub name for an alias (``pythia-70m``), else ``name`` itself."""
    from transformer_lens.tools.model_registry.registry_io import resolve_model_alias

    return resolve_model_alias(name) or name
