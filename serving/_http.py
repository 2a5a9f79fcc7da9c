"""An HTTP API over one loaded `Recommender` (FastAPI; `warmstart api` runs it under uvicorn).

    GET  /health                       model version and counts (never needs the key)
    GET  /recommend?user_id=ID&k=20    a user's top k
    POST /recommend                    {"text": "...", "user_id": "...", "k": 20}: stated interests and/or a user
    POST /items                        {"items": [{"item_id", "title", "text", "categories"}]}: served at once
    GET  /docs, /openapi.json          FastAPI's defaults

Errors are JSON `{"detail": message}` with the message the CLI would print: an unknown id is 404, input that
breaks a data contract 422 (FastAPI's own body and query checks too), a bad option 400, an item id already served
409, a workspace that cannot be read or written 503. With an API key, every endpoint but /health requires it in
the X-API-Key header (401 otherwise). Settings are the caller's business: this module reads none.

Given a `follow` function (`warmstart api` passes `serving.WorkspaceFollower.update`), the app follows its
workspace while it runs: a request at least `follow_every` seconds (1 s by default) after the last check starts
it in a thread, and items and users added by the CLI, or a newly promoted version, are served once it is done.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import polars as pl
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security, status
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
from serving._recommender import Recommender

_log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
MAX_K = 1_000
MAX_ITEMS_PER_REQUEST = 10_000
MAX_TEXT_CHARS = 10_000

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatedInterests(_Strict):
    """Whom to recommend for: interests stated in words, a known user, or both (a blend)."""

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="Interests in words, e.g. 'space opera'.")
    user_id: str | None = Field(None, min_length=1, description="A served user; with text, the two are blended.")
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

    item_id: str = Field(min_length=1)
    title: str
    text: str | None = None
    categories: list[str] = Field(default_factory=list)


class NewItems(_Strict):
    items: list[NewItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class _Live:
    """The recommender being served. Readers take `get()` once per request; writers swap `current` under the lock,
    so a request sees one consistent version of the catalog. With `follow`, a request at least `every` seconds
    after the last check starts a thread that asks it for an up-to-date recommender and swaps it in; the request
    itself, and every request until the swap, is answered by the current recommender, so none waits for a load."""

    def __init__(self, recommender: Recommender, follow: Follow | None = None, every: float = 1.0) -> None:
        self.current = recommender
        self.lock = threading.Lock()
        self.follow = follow
        self.every = every
        self._next_check = time.monotonic() + every

    def get(self) -> Recommender:
        if self.follow is not None and time.monotonic() >= self._next_check and self.lock.acquire(blocking=False):
            threading.Thread(target=self._update, args=(self.follow,), name="warmstart-follow", daemon=True).start()
        return self.current

    def _update(self, follow: Follow) -> None:
        """In its own thread, holding the lock `get` took (a writer waits for it, then extends the new catalog)."""
        try:
            updated = follow(self.current)
            if updated is not None:
                self.current = updated
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


def _key_check(api_key: str | None) -> Callable[..., None]:
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The key `warmstart api` was given.")
    expected = api_key.encode() if api_key else None

    # A default, not Annotated[...]: under postponed annotations FastAPI cannot resolve this local `header`.
    def check(given: str | None = Security(header)) -> None:
        # compare_digest: the time taken does not tell a caller how much of a guess was right.
        if expected is not None and not secrets.compare_digest((given or "").encode(), expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, f"missing or wrong API key: send it in the {API_KEY_HEADER} header."
            )

    return check


def _warmstart_error(_: Request, error: Exception) -> JSONResponse:
    code = next((code for kind, code in _STATUS if isinstance(error, kind)), status.HTTP_500_INTERNAL_SERVER_ERROR)
    return JSONResponse({"detail": " ".join(redact(str(error)).split())}, status_code=code)


def create_app(
    recommender: Recommender,
    *,
    api_key: str | None = None,
    store_items: ItemStore | None = None,
    follow: Follow | None = None,
    follow_every: float = 1.0,
) -> FastAPI:
    """The HTTP API over `recommender`. With `api_key`, every endpoint but /health requires it (X-API-Key).
    `store_items(items)` persists items added through POST /items before they are served; without it the
    endpoint is not offered (items added only in memory would vanish at the next start). `follow` (e.g.
    `WorkspaceFollower.update`) is asked at most every `follow_every` seconds, in a thread a request starts,
    whether the workspace changed: items and users added, a version promoted."""
    live = _Live(recommender, follow, follow_every)
    if recommender.warming is not None and recommender.warming.simulate:
        prepare_warming()  # items added later are warmed: pay torch's first-run set-up now, not on the first one
    app = FastAPI(
        title="warmstart",
        summary="Recommendations from the promoted model version, for known users, stated interests and new items.",
        version=recommender.version,
    )
    app.add_exception_handler(WarmstartError, _warmstart_error)
    app.add_exception_handler(OSError, _warmstart_error)  # a disk or permission failure: the message, no traceback
    guarded = [Depends(_key_check(api_key))]
    _add_health_route(app, live)
    _add_recommend_routes(app, live, guarded)
    if store_items is not None:
        _add_items_route(app, live, store_items, guarded)
    return app


def _add_health_route(app: FastAPI, live: _Live) -> None:
    @app.get("/health", summary="Model version and counts")
    def health() -> dict[str, Any]:
        current = live.get()
        return {
            "status": "ok",
            "model_version": current.version,
            "ranker": current.ranker_name,
            "users": current.inputs.n_users,
            "items": current.inputs.n_items,
            "version_users": current.n_version_users,
        }


def _add_recommend_routes(app: FastAPI, live: _Live, guarded: list[Any]) -> None:
    @app.get("/recommend", dependencies=guarded, summary="A user's top k")
    def recommend_user(
        user_id: Annotated[str, Query(min_length=1, description="A served user id.")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="Recommendations to return.")] = 20,
        include_seen: Annotated[bool, Query(description="Also items logged since the version.")] = False,
    ) -> dict[str, Any]:
        current = live.get()
        return _answer(current, current.recommend([user_id], k, exclude_seen=not include_seen))

    @app.post("/recommend", dependencies=guarded, summary="Top k for stated interests and/or a user")
    def recommend_stated(query: StatedInterests) -> dict[str, Any]:
        current = live.get()
        if query.text is None:
            assert query.user_id is not None  # the model's validator asks for one of the two
            frame = current.recommend([query.user_id], query.k, exclude_seen=not query.include_seen)
        else:
            frame = current.recommend_text(
                query.text, query.k, user_id=query.user_id, weight=query.weight, exclude_seen=not query.include_seen
            )
        return _answer(current, frame)


def _add_items_route(app: FastAPI, live: _Live, store_items: ItemStore, guarded: list[Any]) -> None:
    @app.post("/items", dependencies=guarded, status_code=status.HTTP_201_CREATED, summary="Add items, served at once")
    def add_items(body: NewItems) -> dict[str, Any]:
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
            live.current = extended
        return {"model_version": extended.version, "added": items[Columns.item].to_list()}
