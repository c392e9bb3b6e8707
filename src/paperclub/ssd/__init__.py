"""The inference engine: AR, speculative decoding (SD) and speculative speculative decoding (SSD)."""
