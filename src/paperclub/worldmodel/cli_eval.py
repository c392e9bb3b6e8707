"""`paperclub lewm plan` and `paperclub lewm surprise`."""


def register(sub) -> None:
    pass
