"""idiolect: teach a small language model to write like one person, on their own machine."""

__version__ = "0.1.0"
