"""The task runner the settings choose: threads in the flow's process, or a Dask cluster (prefect-dask); and, for
the work the stages cut into partitions (training pairs, evaluation batches, every user's top k), where those
partitions run: on threads of the flow's process, one per core it may use, or on the same Dask cluster as the
flow's tasks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from prefect.task_runners import ThreadPoolTaskRunner

from flows.settings import WarmstartSettings
from ranker.evaluate import InThreads, PartitionMap

if TYPE_CHECKING:
    from distributed import Client

_Part = TypeVar("_Part")
_Result = TypeVar("_Result")


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


def subflow_runner(flow: Any, settings: WarmstartSettings) -> Any:
    """`flow`, run as a subflow, set to run its tasks where the running flow's do: on its Dask cluster when it has
    one (a second LocalCluster would start workers again), else where the settings say."""
    client = dask_client()
    if client is None:
        return with_runner(flow, settings)
    from prefect_dask import DaskTaskRunner

    return flow.with_options(task_runner=DaskTaskRunner(address=client.scheduler.address))


def dask_client() -> Client | None:
    """The Dask client of the running flow's task runner (its cluster, started on first use) when the flow runs
    on a DaskTaskRunner; None otherwise (threads, or outside a flow)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if runner is None or type(runner).__module__.split(".")[0] != "prefect_dask":
        return None
    return runner.client  # type: ignore[no-any-return]


@dataclass(frozen=True)
class OnCluster:
    """The PartitionMap of a Dask cluster: `fn` (with what it holds: a ranker and its inputs) is shipped to every
    worker once, then each part is a task there; the results are gathered in the order of the parts."""

    client: Client
    ships: ClassVar[bool] = True

    @property
    def workers(self) -> int:
        return max(len(self.client.scheduler_info()["workers"]), 1)

    def __call__(self, fn: Callable[[_Part], _Result], parts: Sequence[_Part], /) -> list[_Result]:
        if not parts:
            return []
        shipped = self.client.scatter(fn, broadcast=True, hash=False)
        futures = self.client.map(_apply, [shipped] * len(parts), list(parts), pure=False)
        try:
            return list(self.client.gather(futures))
        finally:
            self.client.cancel([shipped, *futures])


def _apply(fn: Callable[[_Part], _Result], part: _Part) -> _Result:
    return fn(part)


def partitions() -> PartitionMap:
    """Where the running flow's partitions run: on its Dask cluster, or on threads of its process (`here`)."""
    client = dask_client()
    return OnCluster(client) if client is not None else here()


def here() -> InThreads:
    """Partitions on threads of this process, one per core it may use: for work that stays with what the process
    holds (a fit's choices over its own inputs), Dask or not."""
    return InThreads(len(os.sched_getaffinity(0)))
