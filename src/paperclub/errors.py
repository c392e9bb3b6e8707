"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input or environment. The CLI prints the message on one line and exits with code 2;
    the server maps it to HTTP 400. The message must say what to do next."""


class DraftLost(UserError):
    """The speculative draft (the SSD draft process) is gone. The decoder that raises it can hand over to one that
    needs no draft (`decoder.fallback()`); the engine does so when `EngineConfig.draft_fallback` is set."""
