"""The ``agent`` command line (``agent.cli.main:main``)."""

from agent.cli.main import main

__all__ = ["main"]
