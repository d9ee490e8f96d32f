"""EAP-IG's spec: EAP with integrated gradients, the whole top-k curve from one run."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, register
from .eap import EAPParams, check_attribution_params


@dataclass(frozen=True)
class EAPIGParams(EAPParams):
    """EAP's parameters, and the integration's: ``steps`` points on the path, which path ``ig``."""

    steps: int = 5
    ig: str = "masks"

    def __post_init__(self):
        check_attribution_params(self.k, self.objective, self.max_points, self.absolute, self.steps, self.ig,
                                 self.target, self.pruned)


SPEC = register(MethodSpec(
    name="eap_ig", label="EAP-IG", params=EAPIGParams, run="circuitfind.methods.attribution:eap_ig",
    parameter="k", parameter_label="EAP-IG edges kept k", curve="ranking", order=45, cmap="Reds", marker="v"))
