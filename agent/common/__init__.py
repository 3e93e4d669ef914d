"""Logic shared by the Pi agent (CPython) and the lamp node (MicroPython).

Modules here use only the subset of Python that MicroPython runs: ``math`` and builtins, no
``datetime``, no dataclasses, no ``from __future__``, no type-hint-only imports. They import
nothing from ``agent`` (on a device they are installed as a top-level ``common`` package,
see ``node/manifest.txt``), and this ``__init__`` stays import-free.
"""
