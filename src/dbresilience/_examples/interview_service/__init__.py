"""The AI interview service from the seeds, on dbresilience: ``create_app(Settings(dsn))``."""

from dbresilience._examples.interview_service.app import (
    Settings,
    apply_schema,
    create_app,
    create_naive_app,
)
from dbresilience._examples.interview_service.client import start_session
from dbresilience._examples.interview_service.provider import create_provider

__all__ = [
    "Settings",
    "apply_schema",
    "create_app",
    "create_naive_app",
    "create_provider",
    "start_session",
]
