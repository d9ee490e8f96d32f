"""The task's canonical circuit, evaluated like a method's output (no parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, register


@dataclass(frozen=True)
class CanonicalParams:
    pass


SPEC = register(MethodSpec(name="canonical", label="canonical", params=CanonicalParams,
                           run="circuitfind.methods.canonical:canonical", order=90, marker="*"))
