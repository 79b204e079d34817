"""SIGTERM (`kill`, `scancel`, a SLURM requeue or preemption): stop cleanly and say so.

While the loop is between two steps' boundaries (`deferred`), SIGTERM only asks it to stop:
the loop finishes the step, writes a checkpoint and raises `Terminated`, so a requeued job
resumes from exactly there. Anywhere else (loading the model, the final evaluation) it
raises `Terminated` at once -- the run files are crash-safe, so that is a clean stop too.
`zoexp.run` prints the message and exits with 143 (128 + SIGTERM), as a killed process would.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from zoexp.errors import Terminated

log = logging.getLogger("zoexp")


class GracefulStop:
    def __init__(self) -> None:
        self.requested = False
        self.defer = False
        self._previous = None

    def install(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self.defer:
            raise Terminated("stopped by SIGTERM outside a training step (no new checkpoint); "
                             "rerun the same command to resume from the last one")
        log.warning("SIGTERM received: stopping after this step with a checkpoint")

    @contextlib.contextmanager
    def deferred(self):
        """Within this block SIGTERM waits for the loop to reach a step boundary."""
        self.defer = True
        try:
            yield self
        finally:
            self.defer = False


NEVER = GracefulStop()  # a stop that is never requested (no handler installed)
