"""One module per ``zoo`` sub-command.

Each module defines ``ORDER`` (its place in ``zoo --help``), ``register(subparsers)`` which adds
its parser and sets ``handler``, and imports torch or timm only inside its handler, so that
``zoo --help`` and a cached ``zoo list`` stay fast. Modules here are discovered automatically.
"""
