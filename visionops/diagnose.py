"""Which service failed, and where: S3, MLflow, or the network between.

Client libraries report an outage in their own words ("too many 500 error responses",
"Failed to download artifacts", "Max retries exceeded"), which never say whose fault it is. An
MLflow server that proxies artifacts answers 500 when the S3 behind it is down, so a client sees
"MLflow failed" for an S3 outage. This module turns those errors into the words a user needs:
which service, at which endpoint, and whether it answered with an error or could not be reached at
all; for MLflow it asks the server (a few bounded requests, no retries, only after a failure)
whether its API or only its artifact store fails.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

PROBE_TIMEOUT_S = 5.0

# Words in exception names and messages, first match wins: what happened on the network.
_NETWORK_SIGNS: tuple[tuple[str, str], ...] = (
    ("Connection refused", "connection refused"),
    ("ConnectionRefusedError", "connection refused"),
    ("Name or service not known", "the host name does not resolve"),
    ("NameResolutionError", "the host name does not resolve"),
    ("Temporary failure in name resolution", "the host name does not resolve"),
    ("ConnectTimeout", "the connection timed out"),
    ("ReadTimeout", "no answer within the timeout"),
    ("timed out", "the connection timed out"),
    ("Connection reset", "the connection was reset"),
    ("ConnectionResetError", "the connection was reset"),
    ("RemoteDisconnected", "the connection closed without an answer"),
    ("Connection aborted", "the connection closed without an answer"),
    ("IncompleteRead", "the connection closed in the middle of an answer"),
    ("EndpointConnectionError", "no connection could be made"),
    ("Could not connect to the endpoint", "no connection could be made"),
    ("Broken pipe", "the connection closed while sending"),
)
_STATUS = re.compile(r"too many (\d{3}) error responses")


def network_problem(error: BaseException | str | None) -> str | None:
    """What went wrong on the network, in a few words, or None if the error is not about the
    network (a server that answered, a bad request). Looks through the exception's chain."""
    if isinstance(error, str):
        chain: list[BaseException] = []
        texts = [error]
    else:
        chain = []
        while error is not None and len(chain) < 8:
            chain.append(error)
            reason = getattr(error, "reason", None)  # urllib3's MaxRetryError
            if isinstance(reason, BaseException):
                chain.append(reason)
            error = error.__cause__ or error.__context__
        texts = [f"{type(e).__name__}: {e}" for e in chain]
    text = " | ".join(texts)
    if _STATUS.search(text):
        return None  # the server answered
    for sign, words in _NETWORK_SIGNS:
        if sign in text:
            return words
    if any(isinstance(e, ConnectionError | TimeoutError) for e in chain):
        return "the connection failed"
    return None


def error_status(text: str) -> int | None:
    """The HTTP status a client gave up on after its retries ("too many 503 error responses")."""
    match = _STATUS.search(text)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class MlflowHealth:
    """What an MLflow server answers right now: its API and its artifact store separately."""

    url: str
    reachable: str | None  # None: it answered; else the network problem
    api: str | None  # None: its API works; else what it answered
    artifacts: str | None  # None: artifacts list; else what it answered

    def describe(self) -> str:
        if self.reachable is not None:
            return f"cannot reach MLflow at {self.url} (network: {self.reachable})"
        if self.api is not None:
            return f"MLflow at {self.url} answers {self.api}"
        if self.artifacts is not None:
            return (
                f"MLflow at {self.url} answers, but its artifact store does not: listing "
                f"artifacts answers {self.artifacts} (the S3 behind the server is down or "
                "refuses it; the MLflow server's log names it)"
            )
        return f"MLflow at {self.url} answers, and so does its artifact store"


def _get(url: str) -> tuple[int | None, str]:
    """(status, body) of one GET without retries; (None, network problem) if none came."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return int(response.status), response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read(4096).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        cause = getattr(error, "reason", error)
        return None, network_problem(cause if isinstance(cause, BaseException) else error) or (
            f"{type(error).__name__}: {error}"
        )


def probe_mlflow(url: str) -> MlflowHealth:
    """Ask an MLflow server (http[s]://) whether its API and its artifact store answer."""
    base = url.rstrip("/")
    status, body = _get(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    if status is None:
        return MlflowHealth(base, body, None, None)
    if status >= 500:
        return MlflowHealth(base, None, _answer(status, body), None)
    status, body = _get(f"{base}/api/2.0/mlflow-artifacts/artifacts?path=")
    if status is not None and status >= 500:
        return MlflowHealth(base, None, None, _answer(status, body))
    if status is None:
        return MlflowHealth(base, None, None, f"nothing ({body})")
    return MlflowHealth(base, None, None, None)


def _answer(status: int, body: str) -> str:
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{status}" + (f": {message[:200]}" if message else "")
