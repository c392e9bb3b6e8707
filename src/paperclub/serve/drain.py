"""Graceful shutdown: on SIGTERM or SIGINT the server drains before it exits."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """On SIGTERM or SIGINT: new requests get 503 (the `draining` flag), the sequences in flight finish (for at most
    `drain_timeout_s`), then uvicorn shuts down as usual and the process exits 0. A second signal stops at once.

    (uvicorn's own handler would re-raise the signal after shutting down, so a drained server would die by SIGTERM
    or exit 130: we set its public `should_exit` / `force_exit` flags instead.)"""

    def __init__(self, config: uvicorn.Config, server, drain_timeout_s: float):
        super().__init__(config)
        self.app_server, self.drain_timeout_s = server, drain_timeout_s

    def handle_exit(self, sig, frame) -> None:
        server = self.app_server
        if self.should_exit:  # a second signal while uvicorn shuts down
            self.force_exit = True
            return
        if server.draining or server.loop.in_flight == 0:
            self.should_exit = True
            return
        server.draining = True
        log.warning("draining: %d sequences in flight finish first; new requests get 503 (signal again to stop now)",
                    server.loop.in_flight)
        threading.Thread(target=self._exit_when_drained, daemon=True).start()

    def _exit_when_drained(self) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while self.app_server.loop.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.app_server.loop.in_flight:
            log.warning("drain timeout: %d sequences still in flight are cut off", self.app_server.loop.in_flight)
        self.should_exit = True
