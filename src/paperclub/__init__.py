"""paperclub: five systems from one evening of AI research talks, as real, fast, tested software."""

__version__ = "0.1.0"
