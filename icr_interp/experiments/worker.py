"""Start-up of a sweep's worker process: die with the sweep, before anything heavy is imported.

A ``spawn`` worker unpickles its initializer first, importing that function's
module.  This module imports only the standard library (its package,
``icr_interp.experiments``, is light too), so :func:`init_worker` arms the
"die with the parent" signal within milliseconds of the worker's start; the
runs' modules (torch, TransformerLens) are imported later, when the first task
is unpickled.  A sweep killed while its workers are still importing therefore
takes them with it at once, instead of 20-38 s later (issue 20, item 18).
"""

import os
import signal
import sys
import threading
import time


def init_worker(parent: int) -> None:
    """Die with the sweep, then run one torch thread per worker (runs are parallel across processes)."""
    die_with_parent(parent)
    import torch

    torch.set_num_threads(1)


def die_with_parent(parent: int, poll: float = 0.5) -> None:
    """End this process when process ``parent`` ends (``kill -9`` included)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: the kernel kills us with our parent
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:  # for platforms without PR_SET_PDEATHSIG, and parents that are threads
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="icr-parent-watch", daemon=True).start()
