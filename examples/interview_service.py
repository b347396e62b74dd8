"""The AI interview service (seeds 000/001) on dbresilience, as an ASGI app.

    DATABASE_URL=postgresql://app@db/app REDIS_URL=redis://cache:6379/0 \\
        uvicorn examples.interview_service:app        # or any ASGI server

``python examples/interview_service.py`` creates its schema in ``$DATABASE_URL`` first. The
service's code is in ``src/dbresilience/_examples/interview_service/``: it ships inside the
package for ``dbresilience demo`` and is private there (read it, copy from it; import nothing
from it in an application). See ``docs/example-interview.md``.
"""

from __future__ import annotations

import os

from dbresilience._examples.interview_service import Settings, apply_schema, create_app

app = create_app(
    Settings(
        dsn=os.environ["DATABASE_URL"],
        redis_url=os.environ.get("REDIS_URL"),
        provider_url=os.environ.get("PROVIDER_URL", "http://provider.invalid"),
    )
)

if __name__ == "__main__":
    apply_schema(os.environ["DATABASE_URL"])
    print("schema applied; serve examples.interview_service:app with an ASGI server")
