"""The engine as a service: an OpenAI-compatible HTTP server (`paperclub serve`) over one continuous-batching
engine loop, a chat page, Prometheus metrics, and `paperclub loadtest`."""
