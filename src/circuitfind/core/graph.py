"""The computational graph ACDC searches, and the mask and score types every method shares.

Nodes
    senders    what writes into the residual stream: the embedding (``embed``, or ``tok_embed`` and
               ``pos_embed`` when the two are separate nodes, as for tracr), each head's output
               (``a3.h0``) and each MLP's output (``m2``);
    receivers  what reads the residual stream: each head's query, key and value input (``a3.h0<q>``),
               each MLP's input (``m2``) and the final residual (``resid_post``).

Edges
    ``sender->receiver`` for every sender that writes before the receiver reads (heads of one layer
    do not see each other; a head feeds the MLP of its own layer), and per head the three edges from
    its q/k/v input to the head itself (``a3.h0<q>``): removing one gives the head its ablated query.

Today's blocks (the rules, from the config alone):
    grouped-query attention  (``n_key_value_heads`` < ``n_heads``) the key and value inputs belong to
               the key/value head that a group of query heads shares: one receiver per key/value
               head (``a3.kv0<k>``, ``a3.kv0<v>``) with one incoming edge per sender, and one
               q/k/v edge ``a3.kv0<k>`` into the key/value head ``a3.kv0``, counted once however
               many query heads read it (as the ``eap`` library and MIB count them); queries stay
               per head (``a3.h0<q>``).  In the heads graph a query head's edges cover its query
               only and a key/value head's edges cover its key and value together.
    parallel blocks  (``parallel_attn_mlp``, GPT-J, GPT-NeoX, Pythia) attention and MLP both read
               the block's input, so an MLP does not read the heads of its own layer.
Rotary positions, RMSNorm, gated MLPs and missing biases change the maths, not the graph.

Granularity (``graph=qkv|heads|nodes``) only changes which *edges* exist; the patching engine always
works on the finest structure, the dense ``[receiver slot, sender slot]`` matrix of the qkv graph plus
one slot per head input.  Each edge owns a set of those slots (one in the qkv graph, three when a
head's q, k and v share an edge, all outgoing slots of a node in the node graph), which is the single
place where granularity enters the maths.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Literal, Sequence

import torch

Granularity = Literal["qkv", "heads", "nodes"]
GRANULARITIES: tuple[str, ...] = ("qkv", "heads", "nodes")
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Architecture:
    """The few facts about a model that fix its graph (read from a HookedTransformerConfig)."""

    n_layers: int
    n_heads: int
    has_mlps: bool
    split_embed: bool  # token and positional embedding as two sender nodes (tracr)
    n_kv_heads: int | None = None  # grouped-query attention: key/value heads (None: one per head)
    parallel: bool = False  # attention and MLP read the same block input (parallel_attn_mlp)

    def __post_init__(self):
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"{self.n_heads} heads cannot share {self.n_kv_heads} key/value heads evenly")

    @property
    def grouped(self) -> bool:
        """Whether key/value heads are shared (and named ``a3.kv0`` apart from the query heads)."""
        return self.n_kv_heads is not None and self.n_kv_heads != self.n_heads

    @classmethod
    def from_config(cls, cfg, split_embed: bool = False) -> "Architecture":
        n_kv = getattr(cfg, "n_key_value_heads", None)
        return cls(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            has_mlps=not bool(cfg.attn_only),
            split_embed=split_embed,
            n_kv_heads=None if n_kv in (None, cfg.n_heads) else int(n_kv),
            parallel=bool(getattr(cfg, "parallel_attn_mlp", False)) and not cfg.attn_only,
        )


@dataclass(frozen=True)
class Edge:
    index: int
    name: str
    sender: str
    receiver: str
    stage: int  # first computation that reads the edge (2l: layer l's attention, 2l+1: its MLP, 2L: the output)


def head_name(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def head_input_name(layer: int, head: int, which: str) -> str:
    return f"a{layer}.h{head}<{which}>"


def kv_head_name(layer: int, kv_head: int) -> str:
    """A key/value head shared by several query heads (grouped-query attention)."""
    return f"a{layer}.kv{kv_head}"


class Graph:
    """Senders, receivers, edges and the slot layout the engine patches.

    Slot layout (qkv-split, whatever the granularity):
      sender slots   embed nodes, then per layer: heads 0..H-1, then the MLP (if any);
      receiver rows  per layer: q inputs of heads 0..H-1, k inputs, v inputs, then the MLP input;
                     last row: resid_post;
      qkv slots      per layer, per q/k/v, per head: the edge from a head's input to the head.
    Under grouped-query attention the k and v rows and slots of key/value head g sit where head g's
    would; rows and slots from n_kv_heads to H-1 exist but no edge owns them (they stay at 1, never
    removed), so the engine keeps one [3, H] layout for every model.
    """

    def __init__(self, arch: Architecture, granularity: Granularity = "qkv"):
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown graph granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        self.arch = arch
        self.granularity: Granularity = granularity
        L, H = arch.n_layers, arch.n_heads
        self.n_layers, self.n_heads = L, H
        self.n_kv_heads = arch.n_kv_heads or H

        # ---- sender slots --------------------------------------------------------------------
        self.embed_names: tuple[str, ...] = ("tok_embed", "pos_embed") if arch.split_embed else ("embed",)
        senders: list[str] = list(self.embed_names)
        self.sender_layer: list[int] = [-1] * len(senders)  # -1: written before layer 0
        self._heads_start: list[int] = []  # first sender slot of layer l's heads
        self._mlp_slot: list[int | None] = []
        for layer in range(L):
            self._heads_start.append(len(senders))
            senders += [head_name(layer, h) for h in range(H)]
            self.sender_layer += [layer] * H
            if arch.has_mlps:
                self._mlp_slot.append(len(senders))
                senders.append(f"m{layer}")
                self.sender_layer.append(layer)
            else:
                self._mlp_slot.append(None)
        self.senders: tuple[str, ...] = tuple(senders)
        self.sender_index = {name: i for i, name in enumerate(senders)}

        # ---- receiver rows -------------------------------------------------------------------
        self.rows_per_layer = 3 * H + (1 if arch.has_mlps else 0)
        self.n_rows = L * self.rows_per_layer + 1  # resid_post is the last row
        self.receiver_index: dict[str, int] = {}
        for layer in range(L):
            for which in QKV:
                for h in range(self.n_heads_reading(which)):
                    self.receiver_index[self.input_name(layer, h, which)] = self.head_input_row(layer, h, which)
            if arch.has_mlps:
                self.receiver_index[f"m{layer}"] = self.mlp_row(layer)
        self.receiver_index["resid_post"] = self.n_rows - 1
        self.receivers: tuple[str, ...] = tuple(self.receiver_index)
        self.n_senders, self.n_receivers = len(senders), len(self.receivers)
        self.n_qkv_slots = L * 3 * H
        # Flat slot ids: resid slots are row * n_senders + col, then the qkv slots.
        self.n_slots = self.n_rows * self.n_senders + self.n_qkv_slots

        edges = _numbered_edges(self)
        self.edges: tuple[Edge, ...] = tuple(
            Edge(index=i, name=name, sender=sender, receiver=receiver,
                 stage=min(self.slot_stage(slot) for slot in slots))
            for i, (name, sender, receiver, slots) in enumerate(edges))
        self._edge_slots: list[list[int]] = [slots for *_, slots in edges]
        self.edge_index = {e.name: e.index for e in self.edges}

    # ---- which senders a receiver row can read ------------------------------------------------
    def n_senders_before_heads(self, layer: int) -> int:
        """Senders visible to the heads of ``layer`` (everything written before the layer)."""
        return self._heads_start[layer] if layer < self.n_layers else self.n_senders

    def n_senders_before_mlp(self, layer: int) -> int:
        """Senders visible to the MLP of ``layer``: also that layer's heads, unless the block is
        parallel (attention and MLP both read the block's input)."""
        return self._heads_start[layer] + (0 if self.arch.parallel else self.n_heads)

    def n_senders_before_stage(self, stage: int) -> int:
        """Senders written before ``stage`` runs (stage 2l: layer l's heads, 2l+1: its MLP, which
        runs after the heads even when it does not read them)."""
        layer, is_mlp = divmod(stage, 2)
        if layer >= self.n_layers:
            return self.n_senders
        return self._heads_start[layer] + (self.n_heads if is_mlp else 0)

    def n_heads_reading(self, which: str) -> int:
        """How many heads have a ``which`` input: every query head, or every key/value head."""
        return self.n_heads if which == "q" else self.n_kv_heads

    def input_name(self, layer: int, head: int, which: str) -> str:
        """The receiver ``a3.h0<q>``; under grouped-query attention ``a3.kv0<k>`` (``head`` is then
        the key/value head)."""
        if which != "q" and self.arch.grouped:
            return f"{kv_head_name(layer, head)}<{which}>"
        return head_input_name(layer, head, which)

    def input_owner(self, layer: int, head: int, which: str) -> str:
        """The head a q/k/v input feeds: ``a3.h0``, or the shared key/value head ``a3.kv0``."""
        return kv_head_name(layer, head) if which != "q" and self.arch.grouped else head_name(layer, head)

    def head_input_row(self, layer: int, head: int, which: str) -> int:
        return layer * self.rows_per_layer + QKV.index(which) * self.n_heads + head

    def mlp_row(self, layer: int) -> int:
        return layer * self.rows_per_layer + 3 * self.n_heads

    @property
    def resid_post_row(self) -> int:
        return self.n_rows - 1

    def head_slots(self, layer: int) -> slice:
        return slice(self._heads_start[layer], self._heads_start[layer] + self.n_heads)

    def mlp_slot(self, layer: int) -> int:
        slot = self._mlp_slot[layer]
        assert slot is not None, "attention-only model has no MLP"
        return slot

    def qkv_slot(self, layer: int, head: int, which: str) -> int:
        return self.n_rows * self.n_senders + (layer * 3 + QKV.index(which)) * self.n_heads + head

    def _row_senders(self, row: int) -> range:
        if row == self.resid_post_row:
            return range(self.n_senders)
        layer, offset = divmod(row, self.rows_per_layer)
        if offset < 3 * self.n_heads:
            return range(self.n_senders_before_heads(layer))
        return range(self.n_senders_before_mlp(layer))

    def senders_latest_first(self, row: int) -> list[int]:
        """The sender slots receiver ``row`` reads, in the order its incoming edges are numbered:
        later layers first (a layer's MLP before its heads, heads high to low), the embeddings last,
        token before positional."""
        visible = list(self._row_senders(row))
        n_embed = len(self.embed_names)
        return visible[n_embed:][::-1] + visible[:n_embed]

    def slot_stage(self, slot: int) -> int:
        """The first stage of the forward that reads ``slot``: a run that changes only this slot can
        restart there (stage 2l: layer l's attention, 2l+1: its MLP, 2L: the unembedding)."""
        n_resid = self.n_rows * self.n_senders
        if slot >= n_resid:
            return 2 * ((slot - n_resid) // (3 * self.n_heads))
        row = slot // self.n_senders
        if row == self.resid_post_row:
            return 2 * self.n_layers
        layer, offset = divmod(row, self.rows_per_layer)
        return 2 * layer + (0 if offset < 3 * self.n_heads else 1)

    # ---- edges -----------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @cached_property
    def slot_edge_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot ids, owning edge ids): scatter an edge vector onto the engine's slots."""
        slots, owners = [], []
        for i, edge_slots in enumerate(self._edge_slots):
            slots += edge_slots
            owners += [i] * len(edge_slots)
        return torch.tensor(slots, dtype=torch.long), torch.tensor(owners, dtype=torch.long)

    def edge_slots(self, edge: int | str) -> list[int]:
        return list(self._edge_slots[edge if isinstance(edge, int) else self.edge_index[edge]])

    def slot_values(self, edge_values: torch.Tensor) -> torch.Tensor:
        """Map per-edge mask values (1 keep, 0 ablate, fractions interpolate) onto the flat slots.
        Slots that no edge owns (a receiver reading a sender it cannot see) stay at 1.
        Takes [..., n_edges] (several masks at once) to [..., n_slots]."""
        slots, owners = (t.to(edge_values.device) for t in self.slot_edge_pairs)
        lead = edge_values.shape[:-1]
        dense = torch.ones(*lead, self.n_slots, dtype=edge_values.dtype, device=edge_values.device)
        return dense.scatter(-1, slots.expand(*lead, -1), edge_values[..., owners])

    # ---- structure used by methods and evaluation -----------------------------------------
    @cached_property
    def incoming(self) -> dict[str, list[int]]:
        """Receiver name -> its incoming edge ids, in visiting order."""
        out: dict[str, list[int]] = {}
        for e in self.edges:
            out.setdefault(e.receiver, []).append(e.index)
        return out

    @cached_property
    def outgoing(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for e in self.edges:
            out.setdefault(e.sender, []).append(e.index)
        if self.arch.grouped:  # a key/value head acts through the outputs of the query heads sharing it
            group = self.n_heads // self.n_kv_heads
            for layer in range(self.n_layers):
                for kv in range(self.n_kv_heads):
                    out[kv_head_name(layer, kv)] = [i for h in range(kv * group, (kv + 1) * group)
                                                    for i in out.get(head_name(layer, h), [])]
        return out

    def component(self, node: str) -> str:
        """The model component a node belongs to (``a3.h0<q>`` -> ``a3.h0``): node-level ROC
        counts a head once, whatever input of it an edge touches."""
        return node.split("<", 1)[0]

    def describe(self) -> str:
        a = self.arch
        return (
            f"{self.granularity} graph: {a.n_layers} layers x {a.n_heads} heads"
            f"{f' ({self.n_kv_heads} key/value heads)' if a.grouped else ''}"
            f"{'' if a.has_mlps else ', attention only'}{', parallel blocks' if a.parallel else ''}, {self.n_edges} edges"
        )

    def __repr__(self) -> str:
        return f"Graph({self.describe()})"

    def full_mask(self) -> "EdgeMask":
        return EdgeMask(self, torch.ones(self.n_edges, dtype=torch.bool))

    def mask_from_names(self, names: Iterable[str]) -> "EdgeMask":
        kept = torch.zeros(self.n_edges, dtype=torch.bool)
        for name in names:
            if name not in self.edge_index:
                raise KeyError(f"{name!r} is not an edge of the {self.describe()}")
            kept[self.edge_index[name]] = True
        return EdgeMask(self, kept)


@dataclass
class EdgeMask:
    """Which edges a circuit keeps: one value per edge of ``graph``, 1 keep, 0 ablate.
    Float values interpolate (``m * clean + (1 - m) * ablated``), which is what SP trains."""

    graph: Graph
    values: torch.Tensor

    def __post_init__(self):
        if self.values.shape != (self.graph.n_edges,):
            raise ValueError(f"mask has shape {tuple(self.values.shape)}, graph has {self.graph.n_edges} edges")

    @property
    def kept(self) -> torch.Tensor:
        return self.values.bool() if self.values.dtype == torch.bool else self.values > 0.5

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    def kept_names(self) -> list[str]:
        return [self.graph.edges[i].name for i in torch.nonzero(self.kept).flatten().tolist()]

    def clone(self) -> "EdgeMask":
        return EdgeMask(self.graph, self.values.clone())

    def nodes(self) -> set[str]:
        """Components touched by a kept edge (node-level ROC)."""
        out: set[str] = set()
        for i in torch.nonzero(self.kept).flatten().tolist():
            e = self.graph.edges[i]
            out.add(self.graph.component(e.sender))
            out.add(self.graph.component(e.receiver))
        return out


def _numbered_edges(graph: Graph) -> list[tuple[str, str, str, list[int]]]:
    """The graph's edges as (name, sender, receiver, slots), numbered from the output back: the
    final residual's inputs first, then each layer from the last down (its MLP's inputs; under
    ``graph=qkv`` the q/k/v edges letter-major, v k q, heads high to low, then the q/k/v inputs in
    the same order; under ``graph=heads`` each head's shared input, high index first), and at every
    receiver the senders latest first (``senders_latest_first``).  An edge's id is its place here:
    edges.csv, masks and scores follow it, and ACDC visits edges in this order (``methods/acdc.py``,
    the reference implementation's order)."""
    edges: list[tuple[str, str, str, list[int]]] = []  # name, sender, receiver, slots
    heads = list(reversed(range(graph.n_heads)))  # high index first
    letters = tuple(reversed(QKV))  # v, k, q: the reverse of the order the forward computes them

    def resid_edges(rows: Sequence[int], receiver: str):
        for s in graph.senders_latest_first(rows[0]):
            sender = graph.senders[s]
            slots = [r * graph.n_senders + s for r in rows]
            edges.append((f"{sender}->{receiver}", sender, receiver, slots))

    resid_edges([graph.resid_post_row], "resid_post")
    for layer in reversed(range(graph.n_layers)):
        if graph.arch.has_mlps:
            resid_edges([graph.mlp_row(layer)], f"m{layer}")
        if graph.granularity == "qkv":
            # the q/k/v "nodes" letter-major, then the q/k/v inputs in the same order (under
            # grouped-query attention the k and v letters run over the key/value heads)
            for which in letters:
                for i in reversed(range(graph.n_heads_reading(which))):
                    name = graph.input_name(layer, i, which)
                    edges.append((name, name, graph.input_owner(layer, i, which), [graph.qkv_slot(layer, i, which)]))
            for which in letters:
                for i in reversed(range(graph.n_heads_reading(which))):
                    resid_edges([graph.head_input_row(layer, i, which)], graph.input_name(layer, i, which))
        else:  # the inputs one head reads share an input: one edge covers their rows
            group = graph.n_heads // graph.n_kv_heads
            for h in heads:
                # (which, head or key/value head); GQA: a key/value head's input after its first query head's
                inputs = [("q", h)] + ([("k", h // group), ("v", h // group)] if h % group == 0 else [])
                owners = [graph.input_owner(layer, i, which) for which, i in inputs]
                for owner in dict.fromkeys(owners):
                    rows = [graph.head_input_row(layer, i, which) for (which, i), o in zip(inputs, owners) if o == owner]
                    resid_edges(rows, owner)

    if graph.granularity == "nodes":
        # A node is one "edge" that owns every outgoing slot of its sender.
        by_sender: dict[str, list[int]] = {s: [] for s in graph.senders}
        for _, sender, _, slots in edges:
            by_sender[sender] += slots
        edges = [(graph.senders[s], graph.senders[s], graph.senders[s], sorted(by_sender[graph.senders[s]]))
                 for s in graph.senders_latest_first(graph.resid_post_row)]
    return edges
