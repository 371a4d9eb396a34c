"""A score the level tests prune with (loaded as a plugin): it counts its rounds and can be told to fail one."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.methods import PruningMethod, register_method
from harness.methods.base import PruningContext


@register_method("counted_magnitude")
class CountedMagnitude(PruningMethod):
    """|w|, appending a line to ``log`` per call; raises on call ``fail_call`` while the file ``fail_flag`` exists."""

    class Params(PruningMethod.Params):
        log: str
        fail_flag: str = ""
        fail_call: int = -1

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        log = Path(self.params.log)
        calls = len(log.read_text().splitlines()) if log.exists() else 0
        if calls == self.params.fail_call and self.params.fail_flag and Path(self.params.fail_flag).exists():
            raise RuntimeError(f"level {calls} broke on purpose")
        with log.open("a") as f:
            f.write(f"{calls}\n")
        return {name: w.detach().abs() for name, w in ctx.weights.items()}
