"""Data-augmentation workers that exit when the training process dies, even by ``kill -9``.

batchgenerators' ``NonDetMultiThreadedAugmenter`` starts its workers as daemon ``multiprocessing.Process``es.
Daemon workers are terminated by the parent's exit handlers, which never run after ``SIGKILL`` (or an
out-of-memory kill): the workers then stay behind as orphans, filling their queue forever and holding memory.

The fix runs inside each worker. Every worker calls its data loader (and the loader calls its transforms) as
soon as it starts, so the first call in a new process is where the worker arms itself: on Linux with
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills the worker when its parent dies), elsewhere with a
daemon thread that polls the parent's pid. A parent that already died before the worker armed itself is
detected by its pid. Nothing in batchgenerators or nnU-Net is patched: our loader arms itself
(:class:`~nnunet_llmseg.data.unlabeled_loader.UnlabeledDataLoader`), and our trainers wrap nnU-Net's transforms
in :class:`ExitWithParent` so nnU-Net's own loaders' workers arm themselves too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_S = 1.0
_armed_in: int | None = None  # pid of the process that armed itself (a forked child inherits the value)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def exit_with_parent(parent_pid: int) -> None:
    """Make the calling process exit when ``parent_pid`` dies; a no-op in ``parent_pid`` itself and after the
    first call in a process (cheap enough to call per batch).

    ``parent_pid`` is the process that built the loader (the trainer), recorded before the workers started.
    """
    global _armed_in
    pid = os.getpid()
    if pid == parent_pid or _armed_in == pid:
        return
    _armed_in = pid
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid and not _process_alive(parent_pid):
        os._exit(0)  # the trainer died before this worker armed itself
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                         name="nnunet-llmseg-exit-with-parent").start()


def _watch_parent(parent_pid: int) -> None:
    while _process_alive(parent_pid):
        time.sleep(_POLL_S)
    os._exit(0)


class ExitWithParent:
    """A transform wrapper: arms :func:`exit_with_parent` in whichever process applies it, then applies the
    wrapped transform unchanged.

    nnU-Net's data loader calls its ``transforms`` in the augmenter worker for every sample, so wrapping the
    transforms a trainer builds (``get_training_transforms`` / ``get_validation_transforms``) arms nnU-Net's own
    workers without touching nnU-Net's code. The wrapped transform stays reachable as ``.transform``.
    """

    def __init__(self, transform) -> None:
        self.transform = transform
        self.parent_pid = os.getpid()

    def __call__(self, **data_dict) -> dict:
        exit_with_parent(self.parent_pid)
        return self.transform(**data_dict) if self.transform is not None else data_dict

    def __repr__(self) -> str:
        return f"ExitWithParent({self.transform!r})"
