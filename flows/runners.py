"""The task runner the settings choose: threads in the flow's process, or a Dask cluster (prefect-dask)."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from flows.settings import WarmstartSettings


def task_runner(settings: WarmstartSettings) -> Any:
    """ThreadPoolTaskRunner by default; with task_runner=dask, a DaskTaskRunner on the cluster at dask_address,
    or on a LocalCluster of dask_workers single-threaded processes (torch inside each keeps to its own core)."""
    if settings.task_runner == "threads":
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1, "processes": True}
    )


def with_runner(flow: Any, settings: WarmstartSettings) -> Any:
    """`flow` set to run its tasks where the settings say."""
    return flow.with_options(task_runner=task_runner(settings))
