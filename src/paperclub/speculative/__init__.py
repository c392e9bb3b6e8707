"""Speculative decoding: synchronous SD (`sd.py`), SSD with the draft in its own process (`ssd.py`,
`draft_worker.py`), and the lossless acceptance rule both rely on (`verify.py`)."""

from paperclub.speculative.config import SSDConfig

__all__ = ["SSDConfig"]
