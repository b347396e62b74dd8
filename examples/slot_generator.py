"""Course availability slots (seed 004) on dbresilience, as an ASGI app.

    DATABASE_URL=postgresql://app@db/app uvicorn examples.slot_generator:app

``python examples/slot_generator.py`` creates its schema in ``$DATABASE_URL`` first. The code
is in ``src/dbresilience/_examples/slot_generator/`` (private, shipped for the tests and the
demo). See ``docs/example-slots.md``.
"""

from __future__ import annotations

import os

from dbresilience._examples.slot_generator import apply_schema, create_app

app = create_app(os.environ["DATABASE_URL"])

if __name__ == "__main__":
    apply_schema(os.environ["DATABASE_URL"])
    print("schema applied; serve examples.slot_generator:app with an ASGI server")
