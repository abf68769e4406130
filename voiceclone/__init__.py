"""voiceclone: a command-line trainer for zero-shot voice cloning."""

__version__ = "0.1.0"
