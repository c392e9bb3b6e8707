"""Messages between the target process and the draft process over a torch.distributed gloo process group.

A message is a small picklable header plus a list of CPU tensors, sent as: header length (one int64), the
pickled header (uint8), then each tensor (shapes and dtypes travel in the header). The group is a private
`ProcessGroupGloo` over loopback TCP, not the global default group, so it neither needs nor disturbs
`torch.distributed.init_process_group` state. A peer that dies closes its socket, which fails the other
side's pending receive at once; a peer that hangs is caught by the receive timeout.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

TARGET, DRAFT = 0, 1
_FOREVER = timedelta(days=30)


class TransportError(ConnectionError):
    """The peer died, hung past the timeout, or the connection broke."""


class Channel:
    def __init__(self, pg: dist.ProcessGroup, peer: int):
        self.pg, self.peer = pg, peer

    @classmethod
    def connect(cls, store: dist.Store, rank: int, timeout: timedelta = _FOREVER) -> Channel:
        return cls(dist.ProcessGroupGloo(store, rank, 2, timeout), 1 - rank)

    def send(self, header: dict[str, Any], tensors: list[torch.Tensor] | tuple = (),
             timeout_s: float | None = None) -> None:
        """Send one message. A gloo send completes only once the peer receives it, so it takes a timeout too."""
        timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
        tensors = [t.detach().to("cpu").contiguous() for t in tensors]
        meta = pickle.dumps({"h": header, "t": [(tuple(t.shape), t.dtype) for t in tensors]})
        payload = torch.frombuffer(bytearray(meta), dtype=torch.uint8)
        try:
            for t in [torch.tensor([payload.numel()], dtype=torch.int64), payload, *tensors]:
                if t.numel():
                    work = self.pg.send([t], self.peer, 0)
                    work.wait(timeout) if timeout is not None else work.wait()
        except RuntimeError as e:
            raise TransportError(_first_line(e)) from e

    def recv(self, timeout_s: float | None = None) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """The next message; raises TransportError if the peer is gone or nothing arrives in `timeout_s`."""
        timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
        n = torch.zeros(1, dtype=torch.int64)
        self._recv(n, timeout)
        payload = torch.empty(int(n.item()), dtype=torch.uint8)
        self._recv(payload, timeout)
        meta = pickle.loads(payload.numpy().tobytes())
        tensors = [torch.empty(shape, dtype=dtype) for shape, dtype in meta["t"]]
        for t in tensors:
            if t.numel():
                self._recv(t, timeout)
        return meta["h"], tensors

    def _recv(self, t: torch.Tensor, timeout: timedelta | None) -> None:
        try:
            work = self.pg.recv([t], self.peer, 0)
            work.wait(timeout) if timeout is not None else work.wait()
        except RuntimeError as e:
            raise TransportError(_first_line(e)) from e

    def close(self) -> None:
        try:
            self.pg.abort()
        except (RuntimeError, AttributeError):
            pass


def _first_line(e: Exception) -> str:
    """gloo's messages carry a source path and a long tail; keep what tells the user something."""
    line = str(e).splitlines()[0] if str(e) else type(e).__name__
    return line.split("] ", 1)[-1].split(". This is typically", 1)[0]
