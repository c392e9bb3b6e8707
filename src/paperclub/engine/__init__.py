"""The inference engine: `LLM`, `SamplingParams`, the continuous-batching loop, KV cache, sampling and runners.

    from paperclub.engine import LLM, SamplingParams
"""

from paperclub.engine.sampling import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "SSDConfig"]


def __getattr__(name: str):
    # LLM pulls in model loading and the tokenizer: import it on first use so `paperclub.engine` stays light
    if name in ("LLM", "RequestOutput"):
        from paperclub.engine import llm

        return getattr(llm, name)
    if name == "SSDConfig":
        from paperclub.speculative.config import SSDConfig

        return SSDConfig
    raise AttributeError(name)
