"""The gradient fast paths: mask gradients without autograd's per-receiver copies.

A gradient through the mask (SP, HISP, EAP) needs every receiver read through its mask row, even
where nothing is removed.  Where a layer's q/k/v rows all agree (the masks 1 and alpha * 1 and the
inputs path of attribution patching), its heads share one input x: the forward is the model's own
(ln1(x) once, one projection), and the backward gives each row its own gradient
``-diff_s . dL/dx_r``, with ``dL/dx_r`` the norm's VJP of head r's cotangent (``_OneInputHeads``).
A single receiver (an MLP's input, the final residual) gets its row's gradient directly
(``_OneReceiverRow``).  Rows that differ take the generic read, and ``shared_head_reads=False`` on
the engine switches these paths off; the tests hold both to ``plain_forward``.
"""

from __future__ import annotations

import torch

from .model_reads import norm_parts
from .reads import ReceiverReads
from .senders import SenderDiffs


def reads_one_input(reads: ReceiverReads, r: torch.Tensor, ln1, W: torch.Tensor, b: torch.Tensor,
                    n_kv_heads: int) -> bool:
    """Whether a differentiable run may read a layer's heads through one shared input: one candidate
    whose 3H removed-mask rows ``r`` [1, 3H, n_senders] are all equal (attribution's masks 1,
    alpha * 1, and the inputs path), and only the mask asks for a gradient."""
    if not (reads.linear and torch.is_grad_enabled() and r.requires_grad and r.shape[0] == 1):
        return False
    if W.requires_grad or b.requires_grad or any(p.requires_grad for p in ln1.parameters()):
        return False
    # grouped-query attention: the k/v places from n_kv_heads on own no edge (their rows stay
    # at 1; their zero weights make them read nothing), so only the used places must agree
    H = r.shape[1] // 3
    used = torch.cat([r[0, :H + n_kv_heads], r[0, 2 * H:2 * H + n_kv_heads]])
    return bool((used == used[:1]).all())


def heads_reading_one_input(reads: ReceiverReads, row: int, resid: torch.Tensor, diff: SenderDiffs,
                            rows: torch.Tensor, ln1, W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q/k/v [3, batch, pos, H, d_head] when every head of a layer (its first receiver row ``row``)
    reads the same input x (``rows`` [3H, n_senders], all equal).  The forward is the model's:
    ln1(x) once, projected.  Each row's gradient is still its own: see ``_OneInputHeads``."""
    # The input's value, without the rows' gradient (the Function gives each row its own):
    # the gradient reaching x is the sum over its receivers, as it reaches resid and the diffs.
    x = reads.input_value(rows[0].detach(), row, resid, diff)
    return _OneInputHeads.apply(x, rows, ln1, W, bias, *diff.first_blocks(rows.shape[1]))


def one_receiver_input(reads: ReceiverReads, r: torch.Tensor, row: int, resid: torch.Tensor,
                       diff: SenderDiffs) -> torch.Tensor:
    """The input of one receiver with row ``r`` [1, n_senders] in a differentiable run of a linear
    reader, its value computed without the row's gradient and the gradient attached by
    ``_OneReceiverRow``."""
    x = reads.input_value(r[0].detach(), row, resid, diff)
    return _OneReceiverRow.apply(x, r, *diff.first_blocks(r.shape[1]))


class _OneInputHeads(torch.autograd.Function):
    """q/k/v = ln1(x) @ W + bias from one input x that 3H receivers share, with each receiver's
    mask row given its own gradient.

    A receiver r reads x_r = resid - sum_s removed_rs diff_s, so dL/d removed_rs = -diff_s . G_r
    with G_r = dL/dx_r.  The receivers' inputs are equal here but their gradients are not: G_r is
    layer norm's vector-Jacobian product at x applied to head r's own cotangent (dL/dq_r) W_r^T.
    The backward computes those 3H products (``_norm_input_grads``), the rows' gradient from them,
    and x's gradient as their sum (every receiver read x).  The forward saves x and its one
    projection: the generic path would keep 3H inputs, normalised inputs and projections."""

    @staticmethod
    def forward(ctx, x, rows, ln, W, bias, *sender_diffs):
        # The sender diffs (upstream of this node) go through save_for_backward: kept on ctx
        # directly, the run's later blocks would form a reference cycle with this node.
        projected = torch.einsum("bpd,whde->wbphe", ln(x), W)
        ctx.save_for_backward(x, W, projected, *sender_diffs)
        ctx.ln = ln
        return projected + bias

    @staticmethod
    def backward(ctx, grad_qkv):
        x, W, projected, *sender_diffs = ctx.saved_tensors
        grad_inputs = _norm_input_grads(ctx.ln, x, W, projected, grad_qkv)  # G_r [3H, batch, pos, d_model]
        grad_rows = -_dot_senders(grad_inputs, sender_diffs) if ctx.needs_input_grad[1] else None
        return grad_inputs.sum(0), grad_rows, None, None, None, *([None] * len(sender_diffs))


class _OneReceiverRow(torch.autograd.Function):
    """x itself (one receiver's input: an MLP's or the final residual, [batch, pos, d_model], computed
    from its row without the row's gradient), with the row [1, n_senders] given its gradient
    -diff_s . dL/dx.  Autograd on resid - row @ diffs would also build each diff's gradient
    -row_s * dL/dx, a [n_senders, batch, pos, d_model] outer product, zero at the full mask."""

    @staticmethod
    def forward(ctx, x, row, *sender_diffs):
        ctx.save_for_backward(*sender_diffs)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x):
        grad_row = -_dot_senders(grad_x.unsqueeze(0), ctx.saved_tensors) if ctx.needs_input_grad[1] else None
        return grad_x, grad_row, *([None] * len(ctx.saved_tensors))


def _dot_senders(grads: torch.Tensor, sender_diffs) -> torch.Tensor:
    """grads [n, batch, pos, d_model] . each sender's diff (blocks [k, batch, pos, d_model]) -> [n, n_senders]."""
    # reshape, not flatten: HISP's per-prompt backward runs this under autograd's vmap, which has no rule for flatten
    flat = grads.reshape(grads.shape[0], -1)
    return torch.cat([flat @ diffs.reshape(len(diffs), -1).T for diffs in sender_diffs], 1)


def _norm_input_grads(ln, x: torch.Tensor, W: torch.Tensor, projected: torch.Tensor,
                      grad_qkv: torch.Tensor) -> torch.Tensor:
    """G_r = dL/dx for each head input r when head r computes ln(x) @ W_r (``projected``, [3, batch,
    pos, H, d_head]): [3H, batch, pos, d_model], from the heads' cotangents grad_qkv (shaped as
    ``projected``).

    TransformerLens' four norms (ln(x) = w * yhat (+ b), yhat = xc / s, s = sqrt(mean(xc^2) + eps),
    xc = x minus its mean for LN, x itself for RMS, w = 1 for the Pre variants) have the VJP
    G = (g' - yhat <g', yhat> / d) / s with g' = (w * g) centred (LN) or not (RMS).  Folding w, the
    centring and 1/s into the weights and the small cotangents leaves one [3H, batch, pos, d_model]
    product and one correction, where autograd would make a dozen passes over it.  Any other
    module: torch.func's VJP of the module itself, batched over the heads.  (Only matmul, permute
    and reshape touch the cotangents: HISP's per-prompt backward runs this under autograd's vmap,
    which has no rule for einsum or flatten.)"""
    parts = norm_parts(ln)
    if parts is None or x.dtype not in (torch.float32, torch.float64):
        _, ln_vjp = torch.func.vjp(ln, x.detach())
        return torch.func.vmap(ln_vjp)(_head_cotangents(grad_qkv, W, x.shape))[0]
    if parts.identity:
        return _head_cotangents(grad_qkv, W, x.shape)
    # yhat @ (w W)_r: the forward's projection less layer norm's bias term b @ W_r
    normed_projected = projected - torch.einsum("d,whde->whe", parts.b, W)[:, None, None] \
        if parts.b is not None else projected
    if parts.w is not None:
        W = W * parts.w[:, None]  # [3, H, d_model, d_head]
    if parts.centred:
        x = x - x.mean(-1, keepdim=True)
        W = W - W.mean(2, keepdim=True)  # g' centred = grad_q @ (centred W)^T
    scale = (x.pow(2).mean(-1, keepdim=True) + parts.eps).sqrt()  # [batch, pos, 1]
    normed = x / scale
    grad_scaled = grad_qkv / scale.unsqueeze(-1)  # g / s, [3, batch, pos, H, d_head]
    grads = _head_cotangents(grad_scaled, W, x.shape)  # g' / s
    # <g', yhat> / (d s) per head and token: yhat is centred, so <g' centred, yhat> = <g', yhat>
    dots = (grad_scaled * normed_projected).sum(-1) / x.shape[-1]  # [3, b, p, H]
    return grads.addcmul_(normed, dots.permute(0, 3, 1, 2).reshape(-1, *x.shape[:-1], 1), value=-1)


def _head_cotangents(grad_qkv: torch.Tensor, W: torch.Tensor, shape) -> torch.Tensor:
    """(dL/dq_r) W_r^T for every head place r: [3, batch, pos, H, d_head] -> [3H, batch, pos, d_model]."""
    three, heads, d_model, d_head = W.shape
    per_head = grad_qkv.permute(0, 3, 1, 2, 4).reshape(three * heads, -1, d_head)  # [3H, batch*pos, d_head]
    return per_head.matmul(W.reshape(three * heads, d_model, d_head).transpose(1, 2)).reshape(-1, *shape)
