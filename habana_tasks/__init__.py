"""Precompiled habanalabs driver images, one per kernel release x driver version."""

__version__ = "0.1.0"
