"""Simulators: everything polelink talks to, runnable without hardware.

Each module works from the command line (``python -m sim.<name>``) and from tests.
"""
