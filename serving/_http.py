"""An HTTP API over one loaded `Recommender` (FastAPI; `warmstart api` runs it under uvicorn).

    GET  /health                       model version and counts (never needs the key)
    GET  /recommend?user_id=ID&k=20    a user's top k
    POST /recommend                    {"text": "...", "user_id": "...", "k": 20}: stated interests and/or a user
    POST /items                        {"items": [{"item_id", "title", "text", "categories"}]}: served at once
    GET  /docs, /openapi.json          FastAPI's defaults (behind the key when there is one)

Errors are JSON `{"detail": message}` with the message the CLI would print: an unknown id is 404, input that
breaks a data contract 422 (FastAPI's own body and query checks too, as one short line naming the fields, never
echoing the input), a bad option 400, a body over `max_body_bytes` 413, an item id already served 409, a workspace
that cannot be read or written 503. NaN, infinities, numbers beyond a double (1e400), lone surrogates and ids over
MAX_ID_CHARS are 422 before any lookup. With an API key, every endpoint but /health requires it in the X-API-Key
header (401 otherwise). Settings are the caller's business: this module reads none.

Scoring and adding items run in worker threads, at most `scoring_threads` at once (an anyio capacity limiter);
/health and the error replies run on the event loop. The scoring is CPU-bound and holds the GIL much of the time:
forty of FastAPI's threads scoring at once on two cores made every request, /health included, wait for all of them.
Every served user's top `precompute_k` is ranked in a background thread at start and after every change of what is
served (`Recommender.precompute`); a known user's request within that depth is then a lookup, answered on the
event loop.

Given a `follow` function (`warmstart api` passes `serving.WorkspaceFollower.update`), the app follows its
workspace while it runs: a request at least `follow_every` seconds (1 s by default) after the last check starts
it in a thread, and items and users added by the CLI, or a newly promoted version, are served once it is done.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
import polars as pl
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog import (
    Columns,
    ConfigError,
    DataError,
    UnknownIdError,
    WarmstartError,
    WorkspaceError,
    conform_items,
    redact,
)
from encoders import prepare_warming
from serving._recommender import PRECOMPUTED_K, Recommender

_log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
MAX_K = 1_000
MAX_ITEMS_PER_REQUEST = 10_000
MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 256  # ids of the data sets served are a few characters; a 100,000-character one is an attack
MAX_BODY_BYTES = 1_000_000  # 10,000 items of about 100 bytes
SCORING_THREADS = 2  # the cores of the machine it was measured on (docs/benchmarks.md, "The API under load")
MAX_DETAIL_CHARS = 500  # an error message longer than this is cut: a reply never carries a caller's whole input
_T = TypeVar("_T")

# Persists conformed new items (the CLI passes the workspace's `add-items` stage); raises WarmstartError to refuse.
ItemStore = Callable[[pl.DataFrame], Any]
# Brings a served recommender up to date with its workspace (None: nothing changed); `WorkspaceFollower.update`.
Follow = Callable[[Recommender], Recommender | None]

_STATUS = (  # most specific first: UnknownIdError is a DataError
    (UnknownIdError, status.HTTP_404_NOT_FOUND),
    (DataError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (ConfigError, status.HTTP_400_BAD_REQUEST),
    (WorkspaceError, status.HTTP_503_SERVICE_UNAVAILABLE),
    (OSError, status.HTTP_503_SERVICE_UNAVAILABLE),
)


def _encodable(value: str) -> str:
    """JSON may carry a lone surrogate (\\ud800), which no UTF-8 reply, tokenizer or polars column can hold: refuse
    it here, as a 422, rather than fail later as a 500."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a lone surrogate (not valid Unicode text)") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]


class _Strict(BaseModel):
    # allow_inf_nan: NaN and infinities (JSON's NaN, Infinity, or 1e400 read as inf) are refused, not compared.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StatedInterests(_Strict):
    """Whom to recommend for: interests stated in words, a known user, or both (a blend)."""

    text: Text | None = Field(None, max_length=MAX_TEXT_CHARS, description="Interests in words, e.g. 'space opera'.")
    user_id: Text | None = Field(
        None, min_length=1, max_length=MAX_ID_CHARS, description="A served user; with text, the two are blended."
    )
    k: int = Field(20, ge=1, le=MAX_K, description="Recommendations to return.")
    weight: float = Field(0.5, ge=0, le=1, description="Share of the text in a user + text blend.")
    include_seen: bool = Field(False, description="Also items the user logged after the version was trained.")

    @model_validator(mode="after")
    def _someone(self) -> StatedInterests:
        if self.text is None and self.user_id is None:
            raise ValueError("give 'text' (interests in words), 'user_id', or both")
        return self


class NewItem(_Strict):
    """One item, as in the items contract (see README: Data contracts)."""

    item_id: Text = Field(min_length=1, max_length=MAX_ID_CHARS)
    title: Text
    text: Text | None = None
    categories: list[Text] = Field(default_factory=list)


class NewItems(_Strict):
    items: list[NewItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class _Live:
    """The recommender being served. Readers take `get()` once per request; writers swap `current` under the lock,
    so a request sees one consistent version of the catalog. With `follow`, a request at least `every` seconds
    after the last check starts a thread that asks it for an up-to-date recommender and swaps it in; the request
    itself, and every request until the swap, is answered by the current recommender, so none waits for a load."""

    def __init__(
        self, recommender: Recommender, follow: Follow | None = None, every: float = 1.0, precompute_k: int = 0
    ) -> None:
        self.current = recommender
        self.lock = threading.Lock()
        self.follow = follow
        self.every = every
        self.precompute_k = precompute_k
        self._next_check = time.monotonic() + every
        self._precompute(recommender)

    def swap(self, recommender: Recommender) -> None:
        """Serve `recommender` from now on (the caller holds the lock)."""
        self.current = recommender
        self._precompute(recommender)

    def _precompute(self, recommender: Recommender) -> None:
        """Every user's top lists of `recommender`, ranked in a thread (seconds to a minute) while requests are
        scored live; it gives up as soon as another recommender is served."""
        if self.precompute_k < 1:
            return

        def run() -> None:
            try:
                recommender.precompute(self.precompute_k, stop=lambda: self.current is not recommender)
            except Exception:  # requests go on being scored live
                _log.exception("could not precompute the top lists of %s", recommender.version)

        threading.Thread(target=run, name="warmstart-precompute", daemon=True).start()

    def get(self) -> Recommender:
        if self.follow is not None and time.monotonic() >= self._next_check and self.lock.acquire(blocking=False):
            threading.Thread(target=self._update, args=(self.follow,), name="warmstart-follow", daemon=True).start()
        return self.current

    def _update(self, follow: Follow) -> None:
        """In its own thread, holding the lock `get` took (a writer waits for it, then extends the new catalog)."""
        try:
            updated = follow(self.current)
            if updated is not None:
                self.swap(updated)
        except Exception:  # a thread's failure would otherwise only print; the server goes on serving
            _log.exception("could not follow the workspace; still serving %s", self.current.version)
        finally:
            self._next_check = time.monotonic() + self.every
            self.lock.release()


def _answer(recommender: Recommender, frame: pl.DataFrame) -> dict[str, Any]:
    return {
        "model_version": recommender.version,
        "ranker": recommender.ranker_name,
        "recommendations": frame.to_dicts(),
    }


def _key_check(api_key: str | None) -> Callable[..., Awaitable[None]]:
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The key `warmstart api` was given.")
    expected = api_key.encode() if api_key else None

    # A default, not Annotated[...]: under postponed annotations FastAPI cannot resolve this local `header`.
    async def check(given: str | None = Security(header)) -> None:  # async: no thread hop for a comparison
        # compare_digest: the time taken does not tell a caller how much of a guess was right.
        if expected is not None and not secrets.compare_digest((given or "").encode(), expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, f"missing or wrong API key: send it in the {API_KEY_HEADER} header."
            )

    return check


def _detail(message: str) -> str:
    """A message as a reply may carry it: secrets redacted, one line, at most MAX_DETAIL_CHARS, and encodable (a
    lone surrogate would make the reply itself fail as a 500)."""
    line = " ".join(redact(message).split())
    if len(line) > MAX_DETAIL_CHARS:
        line = line[: MAX_DETAIL_CHARS - 1] + "…"
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


async def _warmstart_error(_: Request, error: Exception) -> JSONResponse:
    code = next((code for kind, code in _STATUS if isinstance(error, kind)), status.HTTP_500_INTERNAL_SERVER_ERROR)
    return JSONResponse({"detail": _detail(str(error))}, status_code=code)


def _where(location: tuple[Any, ...]) -> str:
    """'items.0.title' from FastAPI's ('body', 'items', 0, 'title'); a caller's own key (an unknown field) is cut."""
    parts = [str(part)[:40] for part in location[1:]] if location[:1] in (("body",), ("query",)) else location
    return ".".join(str(part) for part in parts) or str(location[0])


async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's default 422 echoes every offending input (10.5 MB back for a 10 MB body), and fails as a 500 when
    that input is NaN or a lone surrogate; this one names the fields and what is wrong with them, nothing more."""
    problems = error.errors()
    shown = [f"{_where(tuple(p.get('loc', ())))}: {p.get('msg', 'invalid')}" for p in problems[:5]]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return JSONResponse(
        {"detail": _detail("invalid request: " + "; ".join(shown) + more)},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


class _BodyLimit:
    """Refuses a request body over `max_bytes` with 413: at once from its Content-Length, else (a chunked body) as
    soon as the bytes read pass the limit, so a caller cannot make the server hold or parse an unbounded body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
            return
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.max_bytes:  # FastAPI passes an HTTPException raised while it reads the body on as is
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is over {self.max_bytes:,} bytes; send fewer items per request."


def create_app(
    recommender: Recommender,
    *,
    api_key: str | None = None,
    store_items: ItemStore | None = None,
    follow: Follow | None = None,
    follow_every: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    scoring_threads: int = SCORING_THREADS,
    precompute_k: int = PRECOMPUTED_K,
) -> FastAPI:
    """The HTTP API over `recommender`. With `api_key`, every endpoint but /health requires it (X-API-Key), the
    docs and schema included. `store_items(items)` persists items added through POST /items before they are
    served; without it the endpoint is not offered (items added only in memory would vanish at the next start).
    `follow` (e.g. `WorkspaceFollower.update`) is asked at most every `follow_every` seconds, in a thread a request
    starts, whether the workspace changed: items and users added, a version promoted. A body over `max_body_bytes`
    is refused (413); at most `scoring_threads` requests score or add items at once, the others wait their turn.
    Every served user's top `precompute_k` is ranked in a background thread at start and whenever the recommender
    changes (`Recommender.precompute`; 0: never), so a known user's list is then a table lookup."""
    live = _Live(recommender, follow, follow_every, precompute_k)
    if recommender.warming is not None and recommender.warming.simulate:
        prepare_warming()  # items added later are warmed: pay torch's first-run set-up now, not on the first one
    app = FastAPI(
        title="warmstart",
        summary="Recommendations from the promoted model version, for known users, stated interests and new items.",
        version=recommender.version,
        **({"docs_url": None, "redoc_url": None, "openapi_url": None} if api_key else {}),
    )
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(WarmstartError, _warmstart_error)
    app.add_exception_handler(OSError, _warmstart_error)  # a disk or permission failure: the message, no traceback
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    guarded = [Depends(_key_check(api_key))]
    limiter = anyio.CapacityLimiter(scoring_threads)

    async def work(call: Callable[[], _T]) -> _T:
        return await anyio.to_thread.run_sync(call, limiter=limiter)

    _add_health_route(app, live)
    _add_recommend_routes(app, live, guarded, work)
    if store_items is not None:
        _add_items_route(app, live, store_items, guarded, work)
    if api_key:
        _add_guarded_docs(app, guarded)
    return app


# Runs a blocking call in a worker thread, at most `scoring_threads` at once.
Work = Callable[[Callable[[], _T]], Awaitable[_T]]


def _add_guarded_docs(app: FastAPI, guarded: list[Any]) -> None:
    """/openapi.json and /docs for key holders only: the schema lists every endpoint an attacker could try. The
    Swagger page fetches the schema without the header, so with a key it is read with a client that sends it."""

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    async def schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=guarded, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="warmstart")


def _add_health_route(app: FastAPI, live: _Live) -> None:
    # async: on the event loop, never queued behind scoring requests in the worker threads.
    @app.get("/health", summary="Model version and counts")
    async def health() -> dict[str, Any]:
        current = live.get()
        return {
            "status": "ok",
            "model_version": current.version,
            "ranker": current.ranker_name,
            "users": current.inputs.n_users,
            "items": current.inputs.n_items,
            "version_users": current.n_version_users,
            "precomputed_users": current.precomputed_users,
        }


def _add_recommend_routes(app: FastAPI, live: _Live, guarded: list[Any], work: Work[Any]) -> None:
    async def user_list(user_id: str, k: int, include_seen: bool) -> dict[str, Any]:
        """A served user's top k: a precomputed list is a lookup (well under a millisecond), answered on the event
        loop and never queued behind live scoring; any other is scored in a worker thread."""
        current = live.get()
        if not include_seen and current.is_precomputed([user_id], k):
            return _answer(current, current.recommend([user_id], k))
        score = functools.partial(current.recommend, [user_id], k, exclude_seen=not include_seen)
        return _answer(current, await work(score))

    @app.get("/recommend", dependencies=guarded, summary="A user's top k")
    async def recommend_user(
        user_id: Annotated[Text, Query(min_length=1, max_length=MAX_ID_CHARS, description="A served user id.")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="Recommendations to return.")] = 20,
        include_seen: Annotated[bool, Query(description="Also items logged since the version.")] = False,
    ) -> dict[str, Any]:
        return await user_list(user_id, k, include_seen)

    @app.post("/recommend", dependencies=guarded, summary="Top k for stated interests and/or a user")
    async def recommend_stated(query: StatedInterests) -> dict[str, Any]:
        if query.text is None:
            assert query.user_id is not None  # the model's validator asks for one of the two
            return await user_list(query.user_id, query.k, query.include_seen)
        current = live.get()
        score = functools.partial(
            current.recommend_text,
            query.text,
            query.k,
            user_id=query.user_id,
            weight=query.weight,
            exclude_seen=not query.include_seen,
        )
        return _answer(current, await work(score))


def _add_items_route(app: FastAPI, live: _Live, store_items: ItemStore, guarded: list[Any], work: Work[Any]) -> None:
    @app.post("/items", dependencies=guarded, status_code=status.HTTP_201_CREATED, summary="Add items, served at once")
    async def add_items(body: NewItems) -> dict[str, Any]:
        return await work(functools.partial(_add, live, store_items, body))


def _add(live: _Live, store_items: ItemStore, body: NewItems) -> dict[str, Any]:
    """POST /items' work, in a worker thread: conform, extend the served catalog, store."""
    rows = [item.model_dump() for item in body.items]
    schema = {Columns.item: pl.String, Columns.title: pl.String, Columns.text: pl.String}
    raw = pl.DataFrame(rows, schema=schema | {Columns.categories: pl.List(pl.String)})
    items, _ = conform_items(raw, "POST /items")
    with live.lock:  # one writer at a time: each extends the catalog the last one left
        current = live.current
        served = set(current.item_ids.to_list())
        taken = sorted(i for i in items[Columns.item].to_list() if i in served)
        if taken:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"{len(taken)} item id(s) already exist: {taken[:5]}; use new ids."
            )
        extended = current.add_items(items)  # first, so that a refused item is never stored
        store_items(items)
        live.swap(extended)
    return {"model_version": extended.version, "added": items[Columns.item].to_list()}
