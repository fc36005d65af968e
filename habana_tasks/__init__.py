"""Precompiled habanalabs driver images, one per kernel release x driver version.

Rooms, imported one way (tests/unit/test_layout.py): cli -> maintenance -> build ->
verification -> registry, engine -> config -> core.
"""

__version__ = "0.1.0"
