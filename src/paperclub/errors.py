"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input or environment. The CLI prints the message on one line and exits with code 2;
    the server maps it to HTTP 400. The message must say what to do next."""
