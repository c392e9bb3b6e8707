"""The inference engine: AR, speculative decoding (SD) and speculative speculative decoding (SSD)."""

from paperclub.ssd.sampling import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "SSDConfig"]


def __getattr__(name: str):
    # LLM pulls in model loading and the tokenizer: import it on first use so `paperclub.ssd` stays light
    if name in ("LLM", "RequestOutput"):
        from paperclub.ssd import llm

        return getattr(llm, name)
    if name == "SSDConfig":
        from paperclub.ssd.ssd_config import SSDConfig

        return SSDConfig
    raise AttributeError(name)
