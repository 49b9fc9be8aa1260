"""The job-feature API from Python: :class:`AdminClient`.

The Periodic wire protocol stays as the reference defines it, so the
features beyond it (retry policies and the dead set, cron schedules, the
job browser) are served as JSON over HTTP on the server's own port
(docs/http.md).  :class:`AdminClient` speaks that API to the address a
:class:`~periodic_fast.client.Client` uses (TCP or unix socket), with the
same bearer token when the server has an auth file.  It is asyncio-only and
never imports the server.

    async with AdminClient("tcp://127.0.0.1:5000") as admin:
        jobs = await admin.list_jobs("email", state="pending", limit=50)

Each request opens one HTTP/1.1 connection (h11 does the parsing); an
answer other than 2xx raises :class:`AdminError` with the server's message.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlencode

from ._address import parse_address, resolve_address
from ._http_exchange import AnswerTooLarge, http_exchange
from .errors import ClientError

__all__ = ["AdminClient", "AdminError"]

_MAX_ANSWER = 64 * 1024 * 1024  # bytes: the largest answer read


class AdminError(ClientError):
    """The server refused an API request (``status`` is the HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


class AdminClient:
    """Async client of the JSON API beyond the wire protocol.

    :param address: the server's address (as for ``Client``; None:
        ``$PERIODIC_PORT``, else the default unix socket).
    :param token: bearer token of an auth-file identity (admin role for the
        ``/api/`` routes), or None.
    :param timeout: seconds for one request, connection included.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.address = parse_address(resolve_address(address))
        self.token = token
        self.timeout = timeout

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    # -- transport -------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """``method path?query`` with ``body`` as JSON; the decoded JSON
        answer.  Raises :class:`AdminError` for a non-2xx answer,
        ``OSError``/``TimeoutError`` when the server cannot be reached."""
        target = quote(path, safe="/-_.~")
        if query:
            pairs = {k: v for k, v in query.items() if v is not None}
            if pairs:
                target += "?" + urlencode(pairs)
        payload = b"" if body is None else json.dumps(body).encode()
        return await asyncio.wait_for(
            self._exchange(method, target, payload), self.timeout
        )

    async def _exchange(self, method: str, target: str, payload: bytes) -> Any:
        headers = [("Accept", "application/json")]
        if payload:
            headers.append(("Content-Type", "application/json"))
        if self.token:
            headers.append(("Authorization", f"Bearer {self.token}"))
        try:
            status, _, data = await http_exchange(
                str(self.address), method, target, headers, payload, _MAX_ANSWER
            )
        except AnswerTooLarge as exc:
            raise AdminError(exc.status, "answer too large") from None
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
        if not 200 <= status < 300:
            message = answer.get("err") if isinstance(answer, dict) else None
            raise AdminError(status, str(message or data[:200].decode("latin-1")))
        return answer

    # -- retry policies and the dead set -----------------------------------------

    async def retry_policies(self) -> dict[str, Any]:
        """``{"default": P, "funcs": {func: P}}`` (P: the five policy fields)."""
        answer: dict[str, Any] = await self.request("GET", "/api/retry")
        return answer

    async def set_retry_policy(
        self, func: str | None = None, *, preset: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Set ``func``'s policy (None: the server default) and return it.
        Fields not given are kept from the policy in force, or taken from
        ``preset`` (``"reference"``: retry after 1 s for ever; ``"default"``)."""
        body: dict[str, Any] = dict(fields)
        if func is not None:
            body["func"] = func
        if preset is not None:
            body["preset"] = preset
        answer = await self.request("POST", "/api/retry", body=body)
        policy: dict[str, Any] = answer["policy"]
        return policy

    async def reset_retry_policy(self, func: str | None = None) -> None:
        """``func`` follows the default again (None: the default goes back to
        the operator's).  AdminError 404 when ``func`` has no policy."""
        await self.request("DELETE", "/api/retry", query={"func": func})

    async def dead_jobs(
        self,
        func: str | None = None,
        *,
        prefix: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """A page of the dead set: ``{"jobs": [...], "next": cursor or None,
        "total": n}``."""
        query = {"func": func, "prefix": prefix, "cursor": cursor, "limit": limit}
        answer: dict[str, Any] = await self.request("GET", "/api/dead", query=query)
        return answer

    async def retry_dead(
        self, func: str | None = None, name: str | None = None
    ) -> tuple[int, bool]:
        """Dead jobs back to pending, due now: one (``func``, ``name``), a
        func's (no name) or all (neither).  Returns ``(count, more)``: a bulk
        call handles a bounded slice; call again while ``more``."""
        return await self._dead_act("/api/dead/retry", func, name)

    async def delete_dead(
        self, func: str | None = None, name: str | None = None
    ) -> tuple[int, bool]:
        """Delete dead jobs, as :meth:`retry_dead` selects them."""
        return await self._dead_act("/api/dead/delete", func, name)

    async def _dead_act(
        self, path: str, func: str | None, name: str | None
    ) -> tuple[int, bool]:
        body: dict[str, Any] = {}
        if func is not None:
            body["func"] = func
        if name is not None:
            body["name"] = name
        else:
            body["all"] = True
        answer = await self.request("POST", path, body=body)
        return int(answer["count"]), bool(answer.get("more"))

    # -- cron schedules ------------------------------------------------------------

    async def add_cron(
        self,
        func: str,
        name: str,
        cron: str,
        *,
        tz: str = "UTC",
        missed: str = "once",
        args: str = "",
        timeout: int = 0,
    ) -> int:
        """Create or replace the cron schedule of job ``(func, name)`` (the
        job is submitted due at the next fire); the next fire, epoch seconds.
        ``missed`` is "once" or "skip" (docs/cron.md)."""
        answer = await self.request(
            "POST",
            "/api/cron",
            body={
                "func": func,
                "name": name,
                "cron": cron,
                "tz": tz,
                "missed": missed,
                "args": args,
                "timeout": timeout,
            },
        )
        return int(answer["next_run"])

    async def cron_schedules(self, func: str | None = None) -> list[dict[str, Any]]:
        """The cron schedules (of ``func`` only, unless None), each with
        ``func``, ``name``, ``cron``, ``tz``, ``missed``, ``state``,
        ``next_run`` (epoch) and ``next_runs`` (ISO-8601 local times)."""
        answer = await self.request("GET", "/api/cron", query={"func": func})
        return list(answer["schedules"])

    async def remove_cron(self, func: str, name: str) -> None:
        """Remove the schedule of ``(func, name)`` and its job
        (:class:`AdminError` 404 when there is none)."""
        await self.request("DELETE", "/api/cron", query={"func": func, "name": name})

    # -- the job browser -------------------------------------------------------------

    async def list_jobs(
        self,
        func: str,
        *,
        state: str = "all",
        prefix: str | None = None,
        due_from: int | None = None,
        due_to: int | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """A page of ``func``'s jobs by name: ``{"jobs": [...], "next":
        cursor or None}`` (pass ``next`` back as ``cursor``).  ``state``:
        pending, running, locked, dead or all; ``due_from``/``due_to``:
        epoch seconds, inclusive."""
        query = {
            "func": func,
            "state": state,
            "prefix": prefix,
            "due_from": due_from,
            "due_to": due_to,
            "cursor": cursor,
            "limit": limit,
        }
        answer: dict[str, Any] = await self.request("GET", "/api/jobs", query=query)
        return answer

    async def job(self, func: str, name: str) -> dict[str, Any]:
        """One job in full (raises :class:`AdminError` 404 if unknown)."""
        answer: dict[str, Any] = await self.request(
            "GET", "/api/job", query={"func": func, "name": name}
        )
        return answer

    async def run_now(self, func: str, name: str) -> None:
        """Make a pending job due now (409 while it runs)."""
        await self.request(
            "POST", "/api/job/run-now", body={"func": func, "name": name}
        )

    async def reschedule(self, func: str, name: str, sched_at: int) -> None:
        """Move a pending job to ``sched_at`` (epoch seconds)."""
        await self.request(
            "POST",
            "/api/job/reschedule",
            body={"func": func, "name": name, "sched_at": int(sched_at)},
        )

    async def delete_job(self, func: str, name: str) -> None:
        """Delete a job as REMOVE_JOB does (its waiters get "removed")."""
        await self.request("POST", "/api/job/delete", body={"func": func, "name": name})

    # -- dashboard series ----------------------------------------------------------

    async def series(
        self, func: str | None = None, *, limit: int | None = None
    ) -> dict[str, Any]:
        """``GET /api/series``: per func, ``done``, ``failed``, ``late_avg``
        and ``late_max`` per minute over the last hour (60 values, oldest
        first; lateness None for a minute without an assignment) and
        ``minute``, the Unix time of the newest minute.  ``func``: that func
        only; ``limit``: the busiest funcs (server default 50)."""
        answer: dict[str, Any] = await self.request(
            "GET", "/api/series", query={"func": func, "limit": limit}
        )
        return answer
