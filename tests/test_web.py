"""`dbresilience.web` in a FastAPI app, driven with httpx: only the database's errors are
answered as database trouble, exception groups are unwrapped, and a client's request id is
kept, hashed or refused, never replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import psycopg
import pytest
from fastapi import FastAPI, HTTPException

from dbresilience import web
from dbresilience.faults import free_port


def _refused_dsn(pg_dsn: str) -> str:
    return psycopg.conninfo.make_conninfo(pg_dsn, port=str(free_port()), connect_timeout="2")


def make_app(pg_dsn: str, **options: object) -> FastAPI:
    """A FastAPI app whose routes fail the ways a service's handlers do."""
    app = FastAPI()

    async def database() -> None:  # a real refused connection: P1001
        await psycopg.AsyncConnection.connect(_refused_dsn(pg_dsn))

    @app.get("/db")
    async def db_route() -> dict[str, str]:
        await database()
        return {}

    @app.get("/smtp")
    async def smtp_route() -> dict[str, str]:
        raise ConnectionRefusedError("smtp down")

    @app.get("/slow")
    async def slow_route() -> dict[str, str]:
        async with asyncio.timeout(0.001):
            await asyncio.sleep(1)
        return {}

    @app.get("/group/db")
    async def group_db() -> dict[str, str]:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(database())
        return {}

    @app.get("/group/mixed")
    async def group_mixed() -> dict[str, str]:
        async def broken() -> None:
            raise KeyError("a bug")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(database())
            tg.create_task(broken())
        return {}

    @app.get("/http")
    async def http_route() -> dict[str, str]:
        raise HTTPException(status_code=418, detail="teapot")

    @app.get("/rid")
    async def rid_route() -> dict[str, str | None]:
        return {"rid": web.request_id()}

    return web.install(app, **options)  # type: ignore[arg-type]


@pytest.fixture
async def client_for(
    pg_dsn: str,
) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``client_for(**install_options)``: an httpx client on a fresh app; app errors become
    500 answers, as a server would send."""
    clients: list[httpx.AsyncClient] = []

    def make(**options: object) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=make_app(pg_dsn, **options), raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://app")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_a_database_error_is_503_with_retry_after(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    """A refused database connection answers 503 P1001 with a Retry-After."""
    response = await client_for().get("/db")
    assert response.status_code == 503
    assert response.json()["code"] == "P1001"
    assert int(response.headers["retry-after"]) >= 1


async def test_errors_from_elsewhere_are_left_to_the_framework(
    client_for: Callable[..., httpx.AsyncClient],
) -> None:
    """An SMTP client's ConnectionRefusedError and a bare asyncio timeout are not database
    outages: the framework answers them (500), with no database code and no Retry-After."""
    client = client_for()
    for path in ("/smtp", "/slow"):
        response = await client.get(path)
        assert response.status_code == 500, path
        assert "P1001" not in response.text
        assert "P1008" not in response.text
        assert "retry-after" not in response.headers


async def test_exception_groups_are_unwrapped(client_for: Callable[..., httpx.AsyncClient]) -> None:
    """A database error inside a TaskGroup answers 503 like the bare error; a group that also
    holds a bug is the framework's 500."""
    client = client_for()
    response = await client.get("/group/db")
    assert (response.status_code, response.json()["code"]) == (503, "P1001")
    assert (await client.get("/group/mixed")).status_code == 500


async def test_fastapi_shape_on_request(client_for: Callable[..., httpx.AsyncClient]) -> None:
    """shape="detail" wraps the answer in FastAPI's {"detail": ...}; FastAPI's own
    HTTPException keeps its shape either way."""
    client = client_for(shape="detail")
    response = await client.get("/db", headers={"X-Request-ID": "abc-1"})
    assert response.status_code == 503
    assert response.json() == {
        "detail": {
            "code": "P1001",
            "message": "The service is temporarily unavailable; please retry.",
            "request_id": "abc-1",
        }
    }
    assert (await client.get("/http")).json() == {"detail": "teapot"}
    assert (await client_for().get("/http")).json() == {"detail": "teapot"}


@pytest.mark.parametrize("rid", ["abc/def+ghi==", "k:1.2_3-x", "x" * 128, "{id}@host!"])
async def test_a_valid_request_id_is_kept_as_given(
    client_for: Callable[..., httpx.AsyncClient], rid: str
) -> None:
    """Ids of visible ASCII up to 128 characters (base64 included) reach the handler and the
    response unchanged."""
    response = await client_for().get("/rid", headers={"X-Request-ID": rid})
    assert response.json() == {"rid": rid}
    assert response.headers["x-request-id"] == rid


@pytest.mark.parametrize(
    "raw", [b"has space inside", "caf\xe9".encode("latin-1"), b"x" * 129, b"a\x01b"]
)
async def test_an_unsafe_request_id_is_refused_or_hashed_never_replaced(
    client_for: Callable[..., httpx.AsyncClient], raw: bytes
) -> None:
    """By default an unsafe id is a 400 (the handler never runs under a new id); with
    invalid_request_id="hash" it becomes the same safe id on every retry."""
    response = await client_for().get("/rid", headers=[(b"X-Request-ID", raw)])
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_REQUEST_ID"
    hashing = client_for(invalid_request_id="hash")
    first = await hashing.get("/rid", headers=[(b"X-Request-ID", raw)])
    again = await hashing.get("/rid", headers=[(b"X-Request-ID", raw)])
    other = await hashing.get("/rid", headers=[(b"X-Request-ID", raw + b"!")])
    assert first.status_code == 200
    assert first.json() == again.json()
    assert first.json()["rid"].startswith("sha256-")
    assert first.json() != other.json()
    assert first.headers["x-request-id"] == first.json()["rid"]


async def test_no_header_gets_a_fresh_id(client_for: Callable[..., httpx.AsyncClient]) -> None:
    """Without the header the request gets an id of its own."""
    response = await client_for().get("/rid")
    assert response.json()["rid"].startswith("req_")


def test_install_validates_its_options(pg_dsn: str) -> None:
    """A misspelt option fails at install time, naming it."""
    with pytest.raises(ValueError, match="shape"):
        make_app(pg_dsn, shape="fastapi")
    with pytest.raises(ValueError, match="invalid_request_id"):
        make_app(pg_dsn, invalid_request_id="replace")
    with pytest.raises(TypeError, match="also"):
        make_app(pg_dsn, also=("redis",))
