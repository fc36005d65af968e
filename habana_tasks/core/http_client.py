"""HTTP with a bounded retry policy, shared by the registry client and the package downloader."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from urllib3.util.retry import Retry

from habana_tasks.core.errors import (
    BodyDeadlineError,
    BodyError,
    BodyTooLargeError,
    BodyTooSlowError,
    TransientHTTPError,
)
from habana_tasks.core.local_files import MiB

if TYPE_CHECKING:
    from requests.sessions import _Settings

RETRY_STATUSES = frozenset((429, 500, 502, 503, 504))


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded: a few attempts, exponential backoff, one deadline per operation, timeouts always,
    a size bound on every body, and a rate floor under which a body counts as stalled."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    deadline: float = 60.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # A package download may take longer than an API call, but never forever.
    download_deadline: float = 900.0
    # As curl's --speed-limit/--speed-time: a body slower than this for the whole window fails.
    speed_limit: int = 1024
    speed_time: float = 30.0
    # An API answer (manifest, token, tag page, error) larger than this is refused.
    max_body: int = 4 * MiB

    def rules(self) -> Retry:
        """urllib3's Retry for these bounds. It decides here (what to retry, the backoff,
        Retry-After); the loop stays ours because urllib3 retries inside the connection pool,
        out of reach of the deadline, the request count, the injected sleep and the body bounds.
        Every method is retried, as a registry's uploads are idempotent by digest."""
        return _Retry(
            total=self.attempts - 1,
            allowed_methods=None,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=self.base_delay,
            backoff_max=self.max_delay,
            redirect=False,
            raise_on_status=False,
        )


class _Retry(Retry):
    """urllib3 retries a first failure at once; here every retry waits, a first one too (a
    registry answering 503 is given a moment): backoff_factor, doubled per failure, capped."""

    def get_backoff_time(self) -> float:
        return float(min(self.backoff_max, self.backoff_factor * 2 ** (len(self.history) - 1)))


# Failures while a body arrives: a cut chunked body, a reset, a decoding error, a read timeout.
BODY_ERRORS = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.HTTPError,
    OSError,
)
CHUNK = 1 << 16


class BodyReader:
    """Reads a streamed body within its bounds: refused once the deadline passes, once more than
    `limit` bytes arrived, or when fewer than speed_limit bytes/s arrived over a whole
    speed_time window. read1 returns whatever has arrived, so a trickle cannot hold a read past
    either bound by more than one read timeout."""

    def __init__(
        self,
        response: requests.Response,
        policy: RetryPolicy,
        *,
        deadline: float,
        limit: int,
        what: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.response = response
        self.policy = policy
        self.deadline = deadline
        self.limit = limit
        self.what = what
        self.clock = clock
        self.received = 0
        self._window_start = clock()
        self._window_bytes = 0

    def read1(self, size: int = CHUNK) -> bytes:
        now = self.clock()
        if now > self.deadline:
            self.response.close()
            raise BodyDeadlineError(f"{self.what}: the response body did not arrive in time")
        chunk: bytes = self.response.raw.read1(size, decode_content=True)
        self.received += len(chunk)
        if self.received > self.limit:
            self.response.close()
            raise BodyTooLargeError(
                f"{self.what}: the response body is larger than {self.limit} bytes; refused"
            )
        self._window_bytes += len(chunk)
        now = self.clock()
        if chunk and now - self._window_start >= self.policy.speed_time:
            floor = self.policy.speed_limit * self.policy.speed_time
            if self._window_bytes < floor:
                self.response.close()
                raise BodyTooSlowError(
                    f"{self.what}: the response body arrived at less than "
                    f"{self.policy.speed_limit} bytes/s for {self.policy.speed_time:g} s"
                )
            self._window_start, self._window_bytes = now, 0
        return chunk

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.read1():
            yield chunk


class _NoAuth(requests.auth.AuthBase):
    """Sends no credentials, and keeps requests from taking some from ~/.netrc."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


NO_AUTH = _NoAuth()


class _Session(requests.Session):
    """requests re-reads proxy and CA settings from the environment for every request (a tenth
    of a no-op refresh's CPU); they depend only on the origin, so each origin's are read once."""

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[str, object, object, object], _Settings] = {}

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        if proxies or not isinstance(url, str):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (f"{parts.scheme}://{parts.netloc}", stream, verify, cert)
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(
                url, proxies, stream, verify, cert
            )
        return self._environment[key].copy()


class HTTPClient:
    """One requests.Session per thread; counts every request it sends."""

    def __init__(
        self, retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._local = threading.local()
        self._lock = threading.Lock()
        self.requests_sent = 0

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = _Session()
            self._local.session = session
        return session

    def count(self) -> None:
        with self._lock:
            self.requests_sent += 1

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        auth: tuple[str, str] | None = None,
        params: dict[str, str] | None = None,
        netrc: bool = False,
        data: bytes | None = None,
    ) -> requests.Response:
        """Send, retrying connection errors, timeouts, 429 (Retry-After) and 500/502/503/504.

        TLS errors and every other status come back at once: retrying them cannot help.
        ~/.netrc credentials go only where `netrc` is asked for (the vendor's package server):
        netrc matches hosts without ports, so a registry on the same host must never get them.
        """
        policy = self.retry
        started = time.monotonic()
        retry = policy.rules()
        attempt = 0
        while True:
            attempt += 1
            self.count()
            try:
                response = self.session().request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    data=data,
                    auth=auth if auth is not None or netrc else NO_AUTH,
                    stream=True,
                    timeout=(policy.connect_timeout, policy.read_timeout),
                )
                # Error answers are read here even when streaming: they are small, and bounded.
                read_now = not stream or response.status_code >= HTTPStatus.BAD_REQUEST
                if read_now and response.status_code not in RETRY_STATUSES:
                    what = f"{method} {redact(url)}"
                    reader = BodyReader(
                        response,
                        policy,
                        deadline=started + policy.deadline,
                        limit=policy.max_body,
                        what=what,
                    )
                    body = b"".join(reader.chunks())
                    # The body is complete: hand it to requests as if it had read it itself.
                    response._content = body
            except requests.exceptions.SSLError:
                raise
            except BodyError:
                raise
            except (requests.ConnectionError, requests.Timeout, *BODY_ERRORS) as exc:
                last = f"cannot reach {host_of(url)} ({short_reason(exc)})"
                step = _next(retry, method, url, error=exc)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                last = f"HTTP {response.status_code}"
                step = _next(retry, method, url, response=response.raw)
                response.close()
            delay = min(step[1], policy.max_delay) if step else 0.0
            if step is None or time.monotonic() - started + delay > policy.deadline:
                raise TransientHTTPError(
                    f"{method} {redact(url)}: {last} after {attempt} attempt(s)"
                )
            retry = step[0]
            self._sleep(delay)


def _next(
    retry: Retry,
    method: str,
    url: str,
    *,
    error: Exception | None = None,
    response: urllib3.BaseHTTPResponse | None = None,
) -> tuple[Retry, float] | None:
    """urllib3's Retry decides: the rules after this failure and the wait before the next
    attempt (a Retry-After the registry sent, else the backoff); None once they are spent."""
    try:
        retry = retry.increment(method, url, response=response, error=error)
    except urllib3.exceptions.MaxRetryError:
        return None
    waits = response is not None and response.status in Retry.RETRY_AFTER_STATUS_CODES
    after = retry.get_retry_after(response) if waits and response is not None else None
    return retry, after if after is not None else retry.get_backoff_time()


def host_of(url: str) -> str:
    return urlsplit(url).hostname or url


def redact(url: str) -> str:
    """A URL fit for logs and labels: no user:password, no query string (tokens live there)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def short_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Failed to resolve", "Connection refused", "timed out", "Name or service"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:160] if text else type(exc).__name__
