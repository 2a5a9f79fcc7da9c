"""Memory census for `benchmarks/scale.py --census FILE`: where a stage's resident memory is, at each new peak.

Imported at start by every Python process that has this folder on its path (scale.py puts it there only with
`--census`) and idle unless WARMSTART_CENSUS names a file. A daemon thread reads the process's resident memory
every second; each time it passes the highest census so far by WARMSTART_CENSUS_STEP_MB (default 300) and is above
WARMSTART_CENSUS_FLOOR_MB (default 3,000), it counts every numpy array, torch tensor and scipy sparse matrix it can
reach (object attributes, dict values, list items, closures' cells and every thread's frame locals), each memory
block once, under the name that holds it, and appends the largest holders, the total found and the main thread's
stack to the file. What it does not find (allocator slack, libraries' own buffers: faiss indexes, LightGBM's
datasets, glibc arenas) is the difference between resident memory and the total found. A census holds the GIL
for a second or two.
"""

from __future__ import annotations

import os
import threading

_FILE = os.environ.get("WARMSTART_CENSUS")


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _blocks(value: object) -> list[tuple[int, int]]:
    """(address, bytes) of the memory blocks `value` owns or views (empty for anything else)."""
    import sys

    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    if np is not None and isinstance(value, np.ndarray):
        root = value
        while isinstance(root.base, np.ndarray):
            root = root.base
        if root.dtype == object:
            return []
        return [(root.__array_interface__["data"][0], root.nbytes)]
    if torch is not None and isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        return [(storage.data_ptr(), storage.nbytes())]
    polars = sys.modules.get("polars")
    if polars is not None and isinstance(value, polars.DataFrame):
        return [(id(value), value.estimated_size())]  # Arrow buffers: each frame once (shared buffers twice)
    faiss = sys.modules.get("faiss")
    if faiss is not None and isinstance(value, faiss.Index):  # its codes
        try:
            return [(id(value), int(value.ntotal) * int(value.sa_code_size()))]
        except Exception:
            return []
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None and sparse.issparse(value):
        parts = ("data", "indices", "indptr", "row", "col")
        return [block for part in parts if hasattr(value, part) for block in _blocks(getattr(value, part))]
    return []


def _census() -> tuple[dict[str, int], int]:
    """Bytes by holder name ("Type.attribute", "function:local", "list in Type.attribute"), each block once."""
    import gc
    import inspect
    import sys
    import types

    seen: set[int] = set()
    held: dict[str, int] = {}

    def count(name: str, value: object) -> None:
        for address, size in _blocks(value):
            if address and address not in seen:
                seen.add(address)
                held[name] = held.get(name, 0) + size

    def walk(name: str, value: object) -> None:
        if isinstance(value, list | tuple):
            for item in value[:10_000]:
                if isinstance(item, list | tuple):
                    for inner in item[:100]:
                        count(f"[] in {name}", inner)
                else:
                    count(f"[] in {name}", item)
        elif isinstance(value, dict):
            for item in list(value.values())[:10_000]:
                if isinstance(item, tuple):
                    for inner in item:
                        count(f"{{}} in {name}", inner)
                else:
                    count(f"{{}} in {name}", item)
        else:
            count(name, value)

    for frame in sys._current_frames().values():
        while frame is not None:
            snapshot = frame.f_locals
            for local, value in list(snapshot.items()):
                walk(f"{frame.f_code.co_name}:{local}", value)
            if frame.f_code.co_flags & inspect.CO_OPTIMIZED and snapshot is not frame.f_globals:
                # A function's f_locals (Python 3.11) is a snapshot the frame keeps, holding every local it had:
                # kept, it would keep alive what the function lets go of after (and inflate what is measured).
                snapshot.clear()
            frame = frame.f_back
    for owner in gc.get_objects():
        try:  # some objects refuse to be looked at (pydantic's classes, proxies): skipped
            if isinstance(owner, type | types.ModuleType):  # modules: some warn on attribute access
                continue
            if isinstance(owner, types.FunctionType) and owner.__closure__:  # what closures hold
                for free, cell in zip(owner.__code__.co_freevars, owner.__closure__, strict=False):
                    try:
                        walk(f"{owner.__qualname__}:{free}", cell.cell_contents)
                    except ValueError:  # an empty cell
                        continue
            attributes = getattr(owner, "__dict__", None)
            if isinstance(attributes, dict):
                kind = type(owner).__name__
                for attribute, value in list(attributes.items()):
                    walk(f"{kind}.{attribute}", value)
        except Exception:
            continue
    return held, sum(held.values())


def _main_stack(traceback: object) -> str:
    """The main thread's innermost frames, by name. Its frame is not kept: a frame held after its function returned
    keeps every local it had (and its callers' frames), which kept a fit's inputs alive through the next phase."""
    import sys

    main = sys._current_frames().get(threading.main_thread().ident)
    if main is None:
        return ""
    return " <- ".join(f"{f.name}" for f in reversed(traceback.extract_stack(main)[-8:]))  # type: ignore[attr-defined]


def _watch(path: str, step: float, floor: float) -> None:
    import time
    import traceback
    import warnings

    highest = 0.0
    while True:
        time.sleep(1.0)
        resident = _resident_mb()
        if resident < floor or resident < highest + step:
            continue
        highest = resident
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():  # some proxies warn when looked at (torch's deprecated names)
                warnings.simplefilter("ignore")
                held, total = _census()
        except Exception as error:  # a census must never take the process down
            with open(path, "a") as out:
                out.write(f"census failed: {error!r}\n")
            continue
        stack = _main_stack(traceback)
        largest = sorted(held.items(), key=lambda item: -item[1])[:25]
        with open(path, "a") as out:
            out.write(
                f"\n{time.strftime('%H:%M:%S')} pid {os.getpid()} resident {resident:,.0f} MB, "
                f"found {total / 2**20:,.0f} MB ({time.perf_counter() - started:.1f} s)\n  at {stack}\n"
            )
            for name, size in largest:
                out.write(f"  {size / 2**20:9,.0f} MB  {name}\n")


if _FILE:
    threading.Thread(
        target=_watch,
        args=(
            _FILE,
            float(os.environ.get("WARMSTART_CENSUS_STEP_MB", "300")),
            float(os.environ.get("WARMSTART_CENSUS_FLOOR_MB", "3000")),
        ),
        daemon=True,
        name="memory-census",
    ).start()
