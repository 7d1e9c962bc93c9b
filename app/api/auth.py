"""API keys, scopes and quotas: one dependency, applied per router (no checks inside handlers).

``DIFFUSION_API_KEYS_FILE`` names a JSON list of keys, each stored as the sha256 of the key (the key itself
is shown once, by ``diffusion-keys create``, and never stored or logged):

    [{"name": "alice", "sha256": "<hex>", "scopes": ["generate", "denoise"],
      "requests_per_minute": 60, "max_concurrent_jobs": 4}]

Scopes: ``generate`` (generate, img2img), ``denoise`` (denoise, noise), ``admin`` (every job, every
scope). A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; none or an unknown one is a
401 with ``WWW-Authenticate: Bearer``, a key without the scope a 403, a key over its requests per minute a
429 with ``Retry-After`` (counted with the ``limits`` library: in memory, or in Redis across API nodes).
Without a keys file the service is open, as before. The file is read again when it changes (looked at once a
second), so ``diffusion-keys create`` and ``revoke`` take effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, Request
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from app.api.errors import ApiError, single_header
from app.jobs import DEFAULT_PRIORITY, PRIORITY_LEVEL, Priority
from app.metrics import QUOTA_REFUSALS
from app.settings import Settings
from app.store.hashing import file_signature

log = logging.getLogger(__name__)
Scope = Literal["generate", "denoise", "admin"]
CHALLENGE = {"WWW-Authenticate": "Bearer"}
KEYS_LOOK_S = 1.0  # how often a request looks whether the keys file changed


class ApiKey(BaseModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]{1,64}$")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="hex sha256 of the key")
    scopes: list[Scope] = Field(..., min_length=1)
    requests_per_minute: int | None = Field(None, ge=1)
    max_concurrent_jobs: int | None = Field(None, ge=1)
    max_priority: Priority = "high"


KEYS = TypeAdapter(list[ApiKey])


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(path: Path) -> list[ApiKey]:
    """The keys file, checked: the service refuses to start on a file it cannot read."""
    try:
        keys = KEYS.validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as exc:
        raise ValueError(f"DIFFUSION_API_KEYS_FILE {path}: {exc}") from exc
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"DIFFUSION_API_KEYS_FILE {path}: key names must be unique")
    return keys


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key's name and what it may do; ``name`` None when the service has no keys."""

    name: str | None
    scopes: frozenset[str]
    max_concurrent_jobs: int | None = None
    max_priority: str = "high"
    header: str = "authorization"  # the header its key came in (x-api-key or authorization), for the errors

    def priority(self, asked: str | None) -> str:
        """The priority a job runs at: the one asked for (403 above this key's cap), or when none is asked
        for, normal or the key's cap if that is lower (a key capped at low is not refused for asking nothing)."""
        if asked is None:
            return min(DEFAULT_PRIORITY, self.max_priority, key=PRIORITY_LEVEL.__getitem__)
        if PRIORITY_LEVEL[asked] > PRIORITY_LEVEL[self.max_priority]:
            raise ApiError(
                403,
                ["body", "priority"],
                f"key {self.name!r} may ask for priority {self.max_priority!r} at most",
                type="forbidden",
            )
        return asked

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def may(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may see a job of ``owner`` (an open service: every job)."""
        return self.name is None or self.admin or owner == self.name


OPEN = Caller(name=None, scopes=frozenset({"generate", "denoise", "admin"}))


_NOTHING_REFUSED = ("nothing refused yet",)  # no file_signature is this (a missing file's is None)


class Gate:
    """Who may use the service: the keys file's keys (read again when the file changes), their scopes and
    their requests per minute."""

    def __init__(
        self, keys: list[ApiKey] | None, settings: Settings, path: Path | None = None, seen: tuple | None = None
    ) -> None:
        """``seen``: the keys file's signature (``file_signature``) taken before ``keys`` were read from it, so a
        change landing while they were read is read again."""
        self.keys, self.path = keys, path
        # the signature of a file refused (no file: None), so it is not read again until it changes
        self._seen, self._refused, self._next_look = seen, _NOTHING_REFUSED, 0.0
        self.limiter = None
        if keys is not None:  # any key may be given a quota later, by a change of the file
            storage = MemoryStorage()
            if settings.queue_url:
                # the limits library's names: async+redis://, async+rediss://, async+redis+unix://
                uri = "async+" + ("redis+" if settings.queue_url.startswith("unix://") else "") + settings.queue_url
                storage = RedisStorage(uri, implementation="redispy", key_prefix=f"{settings.redis_prefix}:rate")
            self.limiter = MovingWindowRateLimiter(storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Gate":
        if settings.api_keys_file is None:
            if settings.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning(
                    "no DIFFUSION_API_KEYS_FILE: anyone who reaches %s:%s can use the service",
                    settings.host,
                    settings.port,
                )
            return cls(None, settings)
        path = Path(settings.api_keys_file)
        seen = file_signature(path)
        return cls(load_keys(path), settings, path, seen)

    def reload(self) -> None:
        """Read the keys file again if it has changed since it was read (``diffusion-keys`` replaces it whole),
        looking at most once a second: a created or revoked key takes effect within a second, without a
        restart. A file that no longer reads leaves the keys in force, and says why in the log."""
        now = time.monotonic()
        if self.path is None or now < self._next_look:
            return
        self._next_look = now + KEYS_LOOK_S
        seen = file_signature(self.path)
        if seen == self._seen or seen == self._refused:
            return
        try:
            keys = load_keys(self.path)
        except ValueError as exc:
            self._refused = seen
            log.error("%s; the %d keys read before stay in force", exc, len(self.keys or ()))
            return
        self.keys, self._seen, self._refused = keys, seen, _NOTHING_REFUSED
        log.info("API keys file %s read again: %d keys", self.path, len(keys))

    def find(self, presented: str) -> ApiKey | None:
        """The key whose hash matches, comparing every entry in constant time."""
        wanted, match = digest(presented), None
        for key in self.keys or ():
            if hmac.compare_digest(key.sha256, wanted):
                match = key
        return match

    async def caller(self, request: Request, scope: str | None = None) -> Caller:
        """The caller: 401 without a valid key, 403 without ``scope``, then counted against its quota (a
        refused request is not)."""
        if self.keys is None:
            return OPEN
        key, header = self.authenticate(request)
        check_scope(key, scope, header)
        await self._count(key, header)
        return Caller(
            name=key.name,
            scopes=frozenset(key.scopes),
            max_concurrent_jobs=key.max_concurrent_jobs,
            max_priority=key.max_priority,
            header=header,
        )

    def authenticate(self, request: Request) -> tuple[ApiKey | None, str]:
        """The key the request presents (None on an open service) and the header it came in (as the errors
        about it name it), 401 for none or an unknown one. ``X-API-Key`` wins over a bearer key: a proxy in
        front (an identity-aware one, say) may send its own ``Authorization`` with the client's key in
        ``X-API-Key``."""
        if self.keys is None:
            return None, "authorization"
        self.reload()
        header, presented = presented_key(request)
        if not presented:
            raise ApiError(
                401,
                ["header", "authorization"],
                "an API key is required: Authorization: Bearer <key>",
                type="unauthorized",
                headers=CHALLENGE,
            )
        key = self.find(presented)
        if key is None:
            raise ApiError(401, ["header", header], "unknown API key", type="unauthorized", headers=CHALLENGE)
        return key, header

    async def _count(self, key: ApiKey, header: str) -> None:
        if self.limiter is None or key.requests_per_minute is None:
            return
        item = RateLimitItemPerMinute(key.requests_per_minute)
        from app.queue.redis.queue import as_queue_unavailable, unavailable  # only Redis storage can fail

        try:
            allowed = await self.limiter.hit(item, key.name)
        except Exception as exc:
            # the counters live in Redis, which is away: the queue is too
            if (away := as_queue_unavailable(exc, "rate-limit counters: ")) is not None:
                raise away from exc
            raise
        if not allowed:
            QUOTA_REFUSALS.labels(key.name, "requests_per_minute").inc()
            try:
                stats = await self.limiter.get_window_stats(item, key.name)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
            except Exception as exc:
                if not unavailable(exc):
                    raise
                wait = 60  # Redis went away between the two calls: the whole window, at most
            raise ApiError(
                429,
                ["header", header],
                f"key {key.name!r} is over its {key.requests_per_minute} requests per minute",
                type="rate_limited",
                headers={"Retry-After": str(wait)},
            )


def presented_key(request: Request) -> tuple[str, str | None]:
    """The header that decides which key a request presents (as the errors about the key name it), and the key
    in it (None: none). X-API-Key wins when given; an empty one is no key. The header that decides, given twice
    (a proxy adding its own), is a 400: which key is meant and billed is not guessed; an Authorization beside
    an X-API-Key does not decide (it may be the proxy's own)."""
    key = (single_header(request, "X-API-Key") or "").strip()
    if key:
        return "x-api-key", key
    authorization = single_header(request, "Authorization") or ""
    if authorization[:7].lower() == "bearer ":
        return "authorization", authorization[7:].strip() or None
    return "authorization", None


def check_scope(key: ApiKey | None, scope: str | None, header: str = "authorization") -> None:
    """403 unless ``key`` has ``scope`` (or admin); no key (an open service) may do everything."""
    if key is not None and scope is not None and not Caller(name=key.name, scopes=frozenset(key.scopes)).may(scope):
        msg = f"key {key.name!r} lacks the scope {scope!r}"
        raise ApiError(403, ["header", header], msg, type="forbidden")


def require(scope: str | None):
    """The dependency for a router: a valid key (when keys are configured) with ``scope``, if one is named."""

    async def dependency(request: Request) -> Caller:
        caller = await request.app.state.gate.caller(request, scope)
        request.state.caller = caller
        return caller

    def admits(request: Request) -> None:
        """The same 401 and 403, without counting the request against a quota: for the error handlers of a
        body that could not be parsed, which FastAPI refuses before any dependency runs."""
        key, header = request.app.state.gate.authenticate(request)
        check_scope(key, scope, header)

    dependency.admits = admits  # type: ignore[attr-defined]
    return dependency


async def current_caller(request: Request) -> Caller:
    """The caller a router's dependency has established (open service: everyone)."""
    return getattr(request.state, "caller", OPEN)


CallerDep = Annotated[Caller, Depends(current_caller)]


def new_key_entry(
    name: str, scopes: list[str], *, rpm: int | None, max_jobs: int | None, max_priority: str = "high"
) -> tuple[str, dict]:
    """A fresh random key and the entry to store for it (its hash, never the key)."""
    import secrets

    key = "dk_" + secrets.token_urlsafe(32)
    entry = ApiKey(
        name=name,
        sha256=digest(key),
        scopes=scopes,
        requests_per_minute=rpm,
        max_concurrent_jobs=max_jobs,
        max_priority=max_priority,
    )
    return key, json.loads(entry.model_dump_json(exclude_none=True))
