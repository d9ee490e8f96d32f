"""Checkpoints: an interrupted ACDC run resumes to exactly the uninterrupted result."""

import pytest
import torch

from circuitfind.core.checkpoint import Checkpointer, RunInterrupted
from circuitfind.core.graph import Architecture, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.tasks import build_task


def problem():
    task = build_task("tracr_reverse", seed=0)
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=True))
    return Problem(task, graph, "zero", task.metric(None), progress=False)


class StopAfter(Checkpointer):
    """Behaves as if SIGTERM arrived during step ``n``."""

    def __init__(self, *args, stop_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_after = stop_after

    def step(self, state_fn):
        if self.steps + 1 == self.stop_after:
            self.stop_signal = "SIGTERM"
        super().step(state_fn)


@pytest.mark.parametrize("stop_after", [1, 17, 40])
def test_interrupted_acdc_resumes_to_the_uninterrupted_result(tmp_path, stop_after):
    reference = get_method("acdc")(problem(), tau=0.001)
    with pytest.raises(RunInterrupted) as stopped:
        get_method("acdc")(problem(), tau=0.001, checkpointer=StopAfter(tmp_path, "abc", stop_after=stop_after))
    assert stopped.value.steps == stop_after and (tmp_path / "checkpoint.pt").is_file()
    resumed = get_method("acdc")(problem(), tau=0.001, checkpointer=Checkpointer(tmp_path, "abc"))
    assert resumed.circuit.kept_names() == reference.circuit.kept_names()
    assert torch.equal(resumed.scores, reference.scores)
    assert resumed.trace == reference.trace


def test_checkpoints_are_written_every_n_steps(tmp_path):
    checkpointer = Checkpointer(tmp_path, "abc", every_steps=10, every_seconds=1e9)
    result = get_method("acdc")(problem(), tau=0.001, checkpointer=checkpointer)
    assert checkpointer.n_written == len(result.trace) // 10


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    Checkpointer(tmp_path, "abc").save({"x": 1})
    with pytest.raises(ValueError, match="belongs to a run of a different config"):
        Checkpointer(tmp_path, "def").restore()
