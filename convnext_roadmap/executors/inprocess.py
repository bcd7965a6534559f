"""Jobs in this process, one after another: a failing job is reported and the others go on."""

from __future__ import annotations

import time

from ..job import Job
from .base import Executor
from .injob import run
from .records import outcome_line


class InProcess(Executor):
    """In this process, one after another. A failing job is reported and the others go on."""

    def describe(self, jobs: int | None = None) -> str:
        return "in this process, one after another"

    def submit(self, jobs: list[Job]) -> list[dict]:
        for job in jobs:
            start = time.time()
            try:
                run(job)
            except Exception:  # noqa: BLE001 - one failed step must not stop the roadmap; it is in its summary
                pass
            print(outcome_line(job, time.time() - start), flush=True)
        return []
