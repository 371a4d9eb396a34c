"""Methods the Ray tests schedule (loaded as a plugin): they make concurrency and failures observable."""

from __future__ import annotations

import time
from pathlib import Path

from harness.methods import Method, register_method


@register_method("rendezvous")
class Rendezvous(Method):
    """Waits until ``count`` cells have arrived in ``folder`` (so that many ran at once), holds, records the count."""

    class Params(Method.Params):
        folder: str
        count: int = 1
        hold: float = 0.0
        timeout: float = 60.0

    def apply(self, job) -> None:
        folder = Path(self.params.folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / job.cell.cell_id).touch()
        deadline = time.monotonic() + self.params.timeout
        while len(list(folder.iterdir())) < self.params.count and time.monotonic() < deadline:
            time.sleep(0.05)
        peers = len(list(folder.iterdir()))
        time.sleep(self.params.hold)
        job.finish_level(peers=peers)


@register_method("explode")
class Explode(Method):
    """Prints a line, then raises: a plugin bug inside a worker."""

    def apply(self, job) -> None:
        print("about to explode")
        raise RuntimeError("boom: a plugin bug")
