"""Former home of the inference engine, kept as a re-export for code written against it.

Use `paperclub.engine` (LLM, SamplingParams) and `paperclub.speculative` (SSDConfig) instead.
"""

import warnings

__all__ = ["LLM", "SamplingParams", "RequestOutput", "SSDConfig"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(name)
    warnings.warn(f"paperclub.ssd.{name} moved: import it from paperclub.engine", DeprecationWarning, stacklevel=2)
    import paperclub.engine

    return getattr(paperclub.engine, name)
