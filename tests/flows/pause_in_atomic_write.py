"""Run a Python module (`python pause_in_atomic_write.py MARKER NAME MODULE [ARGS...]`) so that it stops half-way
through an atomic write of a file called NAME: the new bytes are in the hidden temporary file beside it and flushed
to disk, the rename over NAME not done. It writes the temporary file's path to MARKER and sleeps there, so that a
test can SIGKILL it at that point. The code under test runs unchanged: only `os.fsync` is wrapped."""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path


def main() -> None:
    marker, name, module, *arguments = sys.argv[1:]
    fsync = os.fsync

    def fsync_then_pause(descriptor: int) -> None:
        fsync(descriptor)
        path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        # atomic_write_bytes names its temporary file .NAME.<hex>.tmp
        if path.name.startswith(f".{name}.") and path.suffix == ".tmp":
            Path(marker).write_text(str(path))
            time.sleep(3600)

    os.fsync = fsync_then_pause
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
