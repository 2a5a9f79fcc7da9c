"""The entry layer: the `warmstart` CLI, settings and (later) the Prefect flows that call the stages."""

import os

# OpenMP's worker threads (LightGBM's, torch's, implicit's) sleep between parallel regions instead of spinning for
# them: on a shared machine a spinning thread burns a core another job (or this one's other thread) needed. The
# same computations, the same results; measured on the loaded 2-core VM, LightGBM LambdaRank's boosting took 5x
# less CPU and 4-6x less wall time (docs/scaling.md). Set before any OpenMP runtime loads (they read it once);
# an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
