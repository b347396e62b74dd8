"""Runnable example services built on dbresilience (the ``web`` extra): see ``examples/``."""
