"""The course slot generator from seed 004, on dbresilience: ``create_app(dsn)``."""

from dbresilience._examples.slot_generator.app import apply_schema, create_app, free_slots

__all__ = ["apply_schema", "create_app", "free_slots"]
