"""RFID / closed-user-group token authorization by the back office (START-5, DESIGN.md §4.1, §5.3).

A non-payment card (RFID/CUG) read by the terminal is authorized by the back office over MQTT:
the agent publishes an :class:`~agent.upstream.contract.AuthRequest` on ``…/auth/request`` with a fresh
``request_id`` and waits (``timeout_s``, default 5 s as the contract promises) for the
:class:`~agent.upstream.contract.AuthResponse` with the same ``request_id`` on ``…/auth/response``.

Offline (broker unreachable, publish failed, or no answer in time) the :class:`OfflinePolicy`
decides, in this order:

``reject``
    every token gets ``unavailable`` (nothing charges without the back office);
``local_list``
    the :class:`LocalAuthList` entry of the UID decides (status and limit); no entry → ``unavailable``;
``local_list_and_cache``
    the local list first (an entry is authoritative: ``blocked`` there wins over a cached accept),
    then the :class:`AuthCache` of recent back-office accepts (with their limits, until they
    expire); else ``unavailable``;
``accept``
    the local list and the cache first (so a listed ``blocked`` card stays blocked), then any other
    token is accepted with ``accept_limit_minor`` (``None``: no limit).

Accepted answers may carry ``limit_minor`` (spending limit) and/or ``balance_minor`` (prepaid
balance): the session is capped at the smaller of the two. An ``accepted`` answer whose cap is 0
counts as ``no_credit``. An accept is cached (until ``expires_at`` of the answer, or
``cache_ttl_s``); any other answer evicts the UID from the cache.

Responses are fed with :meth:`BackendAuthorizer.on_response` (synchronous and non-blocking: it
completes a future; subscribe it with :meth:`BackendAuthorizer.on_message`). Late (after the
timeout), unknown-id and malformed responses are counted in :attr:`BackendAuthorizer.stats` and
ignored.

The :class:`LocalAuthList` is persisted as a JSON file in the state directory (atomic replace:
temporary file, fsync, rename, fsync of the directory) and survives restarts. ``full`` updates
replace it, ``differential`` updates add or replace entries; the ``version`` must increase.

Card data: RFID UIDs go to the back office in clear (contract: a UID is not card-holder data) and
sit in the local list file; in logs they are masked to their last four characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final, Literal, Protocol

import msgspec

from agent.errors import AgentError
from agent.logs import kv
from agent.upstream.contract import (
    AuthRequest,
    AuthResponse,
    ContractError,
    LocalAuthEntry,
    SetLocalAuthList,
    Topics,
    decode_auth_response,
    encode,
    utc_timestamp,
)
from drivers.terminal import mask_token
from statemachines.events import BackendAuthorizationResult, BackendAuthorizationStatus, CardToken

__all__ = [
    "DEFAULT_AUTH_TIMEOUT_S",
    "LOCAL_AUTH_LIST_FILE",
    "AuthCache",
    "AuthDecision",
    "AuthStats",
    "BackendAuthorizer",
    "CachedAccept",
    "LocalAuthList",
    "LocalAuthListConflict",
    "LocalAuthListError",
    "OfflinePolicy",
    "Publish",
    "local_list_path",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_AUTH_TIMEOUT_S: Final = 5.0  # the contract asks the back office to answer within 5 s
DEFAULT_CACHE_TTL_S: Final = 7 * 24 * 3600
DEFAULT_CACHE_SIZE: Final = 1000
MAX_LOCAL_LIST_ENTRIES: Final = 50_000
LOCAL_AUTH_LIST_FILE: Final = "local_auth_list.json"
_FILE_FORMAT: Final = 1
_LATE_IDS_KEPT: Final = 256
_UID_RE: Final = re.compile(r"^(?:[0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$")


class Publish(Protocol):
    """What :meth:`agent.upstream.client.UpstreamClient.publish_now` offers (and test fakes imitate)."""

    async def __call__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None: ...


class OfflinePolicy(StrEnum):
    """What an RFID/CUG token gets when the back office does not answer (START-5)."""

    REJECT = "reject"
    LOCAL_LIST = "local_list"
    LOCAL_LIST_AND_CACHE = "local_list_and_cache"
    ACCEPT = "accept"


DecisionSource = Literal["backend", "local_list", "cache", "policy", "invalid_uid"]


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """The outcome of :meth:`BackendAuthorizer.authorize`; :meth:`to_event` feeds the engine."""

    token: str
    status: BackendAuthorizationStatus
    limit_minor: int | None = None  # caps the session (spending limit or balance); None = no cap
    source: DecisionSource = "backend"
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is BackendAuthorizationStatus.ACCEPTED

    def to_event(self, connector_id: int, at: datetime) -> BackendAuthorizationResult:
        return BackendAuthorizationResult(connector_id, at, self.token, self.status, self.limit_minor)


@dataclass(slots=True)
class AuthStats:
    """Counters since construction."""

    requests: int = 0
    backend_answers: int = 0
    timeouts: int = 0
    publish_failures: int = 0
    offline_decisions: int = 0
    late_responses: int = 0
    unknown_responses: int = 0
    malformed_responses: int = 0


class LocalAuthListError(AgentError):
    """The local authorization list cannot be written (the list in memory is unchanged)."""


class LocalAuthListConflict(AgentError):
    """A ``set_local_auth_list`` that does not fit the current list (version, size)."""


# --------------------------------------------------------------------------------------------------
# Local authorization list (persisted) and cache (memory)
# --------------------------------------------------------------------------------------------------


class _ListFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: int
    version: int
    updated_at: str
    entries: tuple[LocalAuthEntry, ...]


def _parse_ts(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class LocalAuthList:
    """The offline authorization list (``state_dir/local_auth_list.json``).

    ``version`` is ``None`` until the back office sent a first list. Reads are from memory; every
    update writes the whole file atomically **before** it takes effect in memory, so a failed write
    changes nothing.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._entries: dict[str, LocalAuthEntry] = {}
        self._version: int | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, path: Path | str) -> LocalAuthList:
        """The list stored at ``path``; empty when the file is missing or unreadable (logged)."""
        self = cls(path)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self
        except OSError as exc:
            _LOGGER.error("local auth list unreadable; starting empty %s", kv(path=self.path, error=exc))
            return self
        try:
            stored = msgspec.json.decode(raw, type=_ListFile)
            if stored.format != _FILE_FORMAT:
                raise ValueError(f"format {stored.format}")
        except (msgspec.MsgspecError, ValueError) as exc:
            _LOGGER.error(
                "local auth list corrupt; starting empty until the next full list %s",
                kv(path=self.path, error=str(exc)[:120]),
            )
            return self
        self._entries = {entry.uid: entry for entry in stored.entries}
        self._version = stored.version
        return self

    @property
    def version(self) -> int | None:
        return self._version

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, uid: str) -> LocalAuthEntry | None:
        return self._entries.get(uid)

    def entries(self) -> tuple[LocalAuthEntry, ...]:
        return tuple(self._entries.values())

    def plan(self, command: SetLocalAuthList) -> dict[str, LocalAuthEntry]:
        """The entries after ``command``; raises :class:`LocalAuthListConflict`. Changes nothing."""
        if self._version is not None and command.version <= self._version:
            raise LocalAuthListConflict(f"version {command.version} is not above the current {self._version}")
        if command.update == "full":
            merged = {entry.uid: entry for entry in command.entries}
        else:
            merged = dict(self._entries)
            merged.update((entry.uid, entry) for entry in command.entries)
        if len(merged) > MAX_LOCAL_LIST_ENTRIES:
            raise LocalAuthListConflict(
                f"the list would hold {len(merged)} entries, at most {MAX_LOCAL_LIST_ENTRIES}"
            )
        return merged

    async def apply(self, command: SetLocalAuthList, *, now: datetime) -> None:
        """Apply a ``set_local_auth_list``: validate, write the file (in a worker thread, the event
        loop never waits on the disk), then switch the list in memory.

        Raises :class:`LocalAuthListConflict` or :class:`LocalAuthListError`; either way the list is
        unchanged."""
        async with self._lock:
            merged = self.plan(command)
            stored = _ListFile(
                format=_FILE_FORMAT,
                version=command.version,
                updated_at=utc_timestamp(now),
                entries=tuple(merged.values()),
            )
            data = msgspec.json.encode(stored)
            try:
                await asyncio.to_thread(_write_atomically, self.path, data)
            except OSError as exc:
                raise LocalAuthListError(f"cannot write {self.path}: {exc.strerror or exc}") from None
            self._entries = merged
            self._version = command.version
        _LOGGER.info(
            "local auth list updated %s",
            kv(version=command.version, update=command.update, entries=len(merged)),
        )


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class CachedAccept:
    limit_minor: int | None
    expires_at: datetime


class AuthCache:
    """Recent back-office accepts (UID → limit, expiry), bounded LRU, in memory only.

    Lost on a restart by design: the cache is a short-term net for a flaky uplink; the
    :class:`LocalAuthList` is the persistent offline authority.
    """

    def __init__(self, *, ttl_s: float = DEFAULT_CACHE_TTL_S, max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        if ttl_s <= 0 or max_entries <= 0:
            raise ValueError("ttl_s and max_entries must be > 0")
        self.ttl = timedelta(seconds=ttl_s)
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedAccept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, uid: str, limit_minor: int | None, *, now: datetime, expires_at: datetime | None) -> None:
        until = min(expires_at, now + self.ttl) if expires_at is not None else now + self.ttl
        if until <= now:
            self._entries.pop(uid, None)
            return
        self._entries[uid] = CachedAccept(limit_minor, until)
        self._entries.move_to_end(uid)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def evict(self, uid: str) -> None:
        self._entries.pop(uid, None)

    def get(self, uid: str, *, now: datetime) -> CachedAccept | None:
        """The cached accept of ``uid`` (its ``limit_minor`` may be ``None``: no limit), or ``None``
        when not cached or expired."""
        cached = self._entries.get(uid)
        if cached is None:
            return None
        if cached.expires_at <= now:
            del self._entries[uid]
            return None
        return cached


# --------------------------------------------------------------------------------------------------
# The authorizer
# --------------------------------------------------------------------------------------------------


def _cap(*limits: int | None) -> int | None:
    present = [limit for limit in limits if limit is not None]
    return min(present) if present else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BackendAuthorizer:
    """Authorizes RFID/CUG tokens with the back office, offline per :class:`OfflinePolicy`.

    ``publish`` sends the request (``UpstreamClient.publish_now``); ``connected`` tells whether the
    upstream link is up (``lambda: upstream.is_connected``) — while it is down the offline policy
    applies at once instead of after ``timeout_s``. ``clock`` is the wall clock (UTC) for expiry.
    """

    def __init__(
        self,
        publish: Publish,
        *,
        topics: Topics,
        local_list: LocalAuthList,
        cache: AuthCache,
        offline_policy: OfflinePolicy = OfflinePolicy.LOCAL_LIST_AND_CACHE,
        timeout_s: float = DEFAULT_AUTH_TIMEOUT_S,
        accept_limit_minor: int | None = None,
        connected: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = _utcnow,
        mqtt5: bool = True,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        self._publish = publish
        self.topics = topics
        self.local_list = local_list
        self.cache = cache
        self.offline_policy = OfflinePolicy(offline_policy)
        self.timeout_s = float(timeout_s)
        self.accept_limit_minor = accept_limit_minor
        self._connected = connected
        self._clock = clock
        self._mqtt5 = mqtt5
        self._pending: dict[str, asyncio.Future[AuthResponse]] = {}
        self._expired_ids: deque[str] = deque(maxlen=_LATE_IDS_KEPT)
        self.stats = AuthStats()

    # -- inbound ----------------------------------------------------------------------------------

    def on_message(self, message: _HasPayload) -> None:
        """``UpstreamClient.subscribe(topics.auth_response, authorizer.on_message)``."""
        self.on_response(message.payload)

    def on_response(self, payload: bytes) -> None:
        """Complete the matching :meth:`authorize`; count and ignore anything else. Never raises."""
        try:
            response = decode_auth_response(payload)
        except ContractError as exc:
            self.stats.malformed_responses += 1
            _LOGGER.warning("auth response malformed; ignored %s", kv(code=exc.code.value))
            return
        future = self._pending.get(response.request_id)
        if future is None or future.done():
            if response.request_id in self._expired_ids or future is not None:
                self.stats.late_responses += 1
                _LOGGER.info("auth response too late; ignored %s", kv(request_id=response.request_id))
            else:
                self.stats.unknown_responses += 1
                _LOGGER.info("auth response for an unknown request %s", kv(request_id=response.request_id))
            return
        future.set_result(response)

    # -- authorize -------------------------------------------------------------------------------

    async def authorize(self, token: CardToken | str, connector_id: int | None = None) -> AuthDecision:
        """Ask the back office; on silence or while offline apply the offline policy. Never raises
        (but ``CancelledError``); takes at most ``timeout_s`` (plus the publish of the request)."""
        raw = token.token if isinstance(token, CardToken) else token
        uid = raw.strip().upper()
        hint = mask_token(uid)
        if not _UID_RE.match(uid):
            _LOGGER.warning("rfid token is not a 4/7/10-byte UID; rejected %s", kv(token=hint))
            return AuthDecision(raw, BackendAuthorizationStatus.REJECTED, source="invalid_uid", reason="uid")
        if not self._connected():
            return self._offline(raw, uid, connector_id, "upstream disconnected")
        request_id = str(uuid.uuid4())
        request = AuthRequest(
            request_id=request_id, connector_id=connector_id, uid=uid, ts=utc_timestamp(self._clock())
        )
        future: asyncio.Future[AuthResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.stats.requests += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    await self._publish(
                        self.topics.auth_request,
                        encode(request),
                        1,
                        response_topic=self.topics.auth_response if self._mqtt5 else None,
                        correlation_data=request_id.encode() if self._mqtt5 else None,
                    )
                except (AgentError, OSError) as exc:
                    self.stats.publish_failures += 1
                    return self._offline(raw, uid, connector_id, f"publish failed: {type(exc).__name__}")
                response = await future
        except TimeoutError:
            self.stats.timeouts += 1
            self._expired_ids.append(request_id)
            return self._offline(raw, uid, connector_id, f"no answer within {self.timeout_s:g} s")
        finally:
            del self._pending[request_id]
            if not future.done():
                future.cancel()
        self.stats.backend_answers += 1
        return self._from_backend(raw, uid, connector_id, response)

    def _from_backend(
        self, raw: str, uid: str, connector_id: int | None, answer: AuthResponse
    ) -> AuthDecision:
        now = self._clock()
        status = BackendAuthorizationStatus(answer.status)
        limit = _cap(answer.limit_minor, answer.balance_minor) if answer.status == "accepted" else None
        if status is BackendAuthorizationStatus.ACCEPTED and limit == 0:
            status, limit = BackendAuthorizationStatus.NO_CREDIT, None
        if status is BackendAuthorizationStatus.ACCEPTED:
            try:
                expires = _parse_ts(answer.expires_at)
            except ValueError:
                expires = None
            self.cache.put(uid, limit, now=now, expires_at=expires)
        else:
            self.cache.evict(uid)
        _LOGGER.info(
            "rfid authorization %s",
            kv(
                token=mask_token(uid),
                connector=connector_id,
                status=status.value,
                limit_minor=limit,
                source="backend",
            ),
        )
        return AuthDecision(raw, status, limit, "backend", answer.reason)

    def _offline(self, raw: str, uid: str, connector_id: int | None, why: str) -> AuthDecision:
        self.stats.offline_decisions += 1
        decision = self._offline_decision(raw, uid)
        _LOGGER.info(
            "rfid authorization offline %s",
            kv(
                token=mask_token(uid),
                connector=connector_id,
                policy=self.offline_policy.value,
                status=decision.status.value,
                limit_minor=decision.limit_minor,
                source=decision.source,
                why=why,
            ),
        )
        return decision

    def _offline_decision(self, raw: str, uid: str) -> AuthDecision:
        policy = self.offline_policy
        unavailable = AuthDecision(
            raw, BackendAuthorizationStatus.UNAVAILABLE, source="policy", reason="offline"
        )
        if policy is OfflinePolicy.REJECT:
            return unavailable
        now = self._clock()
        entry = self.local_list.get(uid)
        if entry is not None:
            status = BackendAuthorizationStatus(entry.status)
            expires = _parse_ts(entry.expires_at)
            if status is BackendAuthorizationStatus.ACCEPTED and expires is not None and expires <= now:
                status = BackendAuthorizationStatus.EXPIRED
            limit = entry.limit_minor if status is BackendAuthorizationStatus.ACCEPTED else None
            if status is BackendAuthorizationStatus.ACCEPTED and limit == 0:
                status, limit = BackendAuthorizationStatus.NO_CREDIT, None
            return AuthDecision(raw, status, limit, "local_list")
        if policy in (OfflinePolicy.LOCAL_LIST_AND_CACHE, OfflinePolicy.ACCEPT):
            cached = self.cache.get(uid, now=now)
            if cached is not None:
                return AuthDecision(raw, BackendAuthorizationStatus.ACCEPTED, cached.limit_minor, "cache")
        if policy is OfflinePolicy.ACCEPT:
            return AuthDecision(raw, BackendAuthorizationStatus.ACCEPTED, self.accept_limit_minor, "policy")
        return unavailable

    @property
    def pending(self) -> int:
        """Requests waiting for an answer."""
        return len(self._pending)


class _HasPayload(Protocol):
    @property
    def payload(self) -> bytes: ...


def local_list_path(state_dir: Path | str) -> Path:
    """Where the runtime keeps the list: ``state_dir/local_auth_list.json``."""
    return Path(state_dir) / LOCAL_AUTH_LIST_FILE
