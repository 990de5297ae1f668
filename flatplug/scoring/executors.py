"""The local executor: jobs one after another in this process, each row written to the store at once."""

from __future__ import annotations

from typing import Any, Sequence

from .._progress import progress
from ..store import Store
from .job import Job
from .run import run_job


class LocalExecutor:
    """Runs jobs one after another in this process, writing each row to the store at once."""

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"the local executor takes no options, got {sorted(options)}")

    def run(self, jobs: Sequence[Job], store: Store, *, quiet: bool = False) -> None:
        for job in progress(jobs, desc="models", quiet=quiet, leave=True):
            run_job(job, lambda row: store.put(**row), done=lambda key: store.has(**key), quiet=quiet)
