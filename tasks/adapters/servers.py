"""Transient server errors in pipeline steps: retry with backoff, then fail naming the server.

The stack's servers (S3 store, MLflow, Prefect) can be briefly unable to answer: restarting,
busy, or a connection reset. Library retries come first, this helper second:

- boto3 clients: `boto_config()` (botocore's "standard" retry mode: connection errors, timeouts,
  throttling and HTTP 500/502/503/504 are retried with exponential backoff and jitter);
- MLflow's client: `MLFLOW_RETRY_ENV` (its own urllib3 retries of connection errors and 429/5xx,
  and its request timeout); Prefect's client: `PREFECT_RETRY_ENV`; both exported by
  `bound_client_env()`.  DVC's S3 client: `DVC_RETRY_ENV` in a DVC command's environment;
- `mlflow_unavailable` (flows/pipeline_cli.py has `prefect_unavailable`, since only the Prefect
  wrappers and flows import Prefect): a request that failed after those retries, as
  `ServerUnavailable` naming the server;
- `retry_call` for what those do not cover, or to bound a whole idempotent operation: reading a
  streamed S3 body, a sequence of calls, DVC, or an error that outlived the library's retries.
  It retries only transient errors (`is_transient`), waits `base_s`, 2 `base_s`, 4 `base_s`, ...
  (each wait at most `max_wait_s`, all waits together at most `max_total_s`), prints one line
  per retry, and finally raises `ServerUnavailable`, whose message is one line that ends with
  what to do about it (`FIXES`):

      S3 store at http://127.0.0.1:8333 did not answer after 5 tries over 15 s: EndpointConnectionError: ...; check that it runs ...

A server that answers but refuses this client (no or wrong credentials, HTTP 401; an account
not allowed to do this, 403; S3's InvalidAccessKeyId / SignatureDoesNotMatch / AccessDenied) is
never retried: `refused(e)` turns such an error into `ServerRefused`, one line naming the
server, the account and the variables to set (`missing_env.role_fix`), e.g.

    MLflow server at http://127.0.0.1:5000 refused the password of account 'pipeline' (401 UNAUTHENTICATED): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to ...; for the team stack run `eval "$(dmops env --team --role pipeline)"`

`mlflow_call` raises it in place of MLflow's error, `mlflow_unavailable` returns it for an
MLflow error raised anywhere else, and the release readers (tasks/adapters/release.py) raise
it for S3's.

Settings: RetryPolicy's defaults, or DMOPS_RETRY_ATTEMPTS, DMOPS_RETRY_BASE_S,
DMOPS_RETRY_MAX_WAIT_S and DMOPS_RETRY_MAX_TOTAL_S through `RetryPolicy.from_env()`.
Wrap only idempotent work: a retried call runs again from its start."""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, TypeVar

T = TypeVar("T")

S3 = "S3 store"
MLFLOW = "MLflow server"
PREFECT = "Prefect server"

ENV = {"attempts": "DMOPS_RETRY_ATTEMPTS", "base_s": "DMOPS_RETRY_BASE_S",
       "max_wait_s": "DMOPS_RETRY_MAX_WAIT_S", "max_total_s": "DMOPS_RETRY_MAX_TOTAL_S"}

# MLflow's own client retries (read by mlflow.utils.rest_utils on every request): 2 retries with
# urllib3 backoff 1, 2 s instead of the default 7 with factor 2 (about 4 minutes). Short for the
# same reason as boto_config: retry_call's waits come on top, and the layers multiply. The
# timeout (connect, and each wait for response bytes; not a whole upload) is 30 s instead of
# 120 s: a server that accepts connections but never answers then costs 3 x 30 s per request
# instead of 6 minutes. `bound_client_env()` exports these where the user has not set them.
MLFLOW_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

# Prefect's client retries a failed request 5 times with waits of 2, 4, 8, 16, 32 s (+ up to 20 %)
# and a 60 s timeout: about 75 s for each request to a dead server, 7 minutes to a hung one; a
# flow whose server went away makes several (the summary artifact, its final state).  4
# retries still ride out a server restart (waits of 2 + 4 + 8 + 16 s); timeout as for MLflow.
# Prefect reads these when it is imported: `bound_client_env()` must run before that.
PREFECT_RETRY_ENV = {"PREFECT_CLIENT_MAX_RETRIES": "4", "PREFECT_API_REQUEST_TIMEOUT": "30"}

# What to do about a server that does not answer: the end of ServerUnavailable's line.
_CHECK = ("check that it runs (`dmops status`, or `dmops status --team` for the team stack; "
          "`dmops up [--team]` starts it) and that {} names it")
FIXES = {S3: _CHECK.format("AWS_ENDPOINT_URL_S3"), MLFLOW: _CHECK.format("MLFLOW_TRACKING_URI"),
         PREFECT: _CHECK.format("PREFECT_API_URL")}

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_S3_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                                 "RequestTimeoutException", "Throttling", "ThrottlingException",
                                 "PriorRequestNotComplete"})
_TRANSIENT_MLFLOW_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})


class ServerUnavailable(RuntimeError):
    """A server kept failing with transient errors for the whole retry budget.

    Attributes: server ("S3 store", ...), url, tries (int), seconds (float, first try to last
    failure; None when unknown), last (the last exception, also chained as __cause__), fix
    (what to do: `FIXES[server]` unless given; `detail`, when given, goes before it)."""

    def __init__(self, server: str, url: str, tries: int, seconds: Optional[float], last: BaseException,
                 *, detail: str = "", fix: Optional[str] = None):
        self.server, self.url, self.tries, self.seconds, self.last = server, url, tries, seconds, last
        self.fix = fix if fix is not None else FIXES.get(server, "")
        over = "" if seconds is None else f" over {seconds:.0f} s"
        tail = "".join(f"; {part}" for part in (detail, self.fix) if part)
        super().__init__(f"{server} at {url} did not answer after {tries} {'try' if tries == 1 else 'tries'}"
                         f"{over}: {describe(_root_of_mlflow_error(last))}{tail}")


class ServerRefused(ServerUnavailable):
    """A server answered but refused this client: no credentials or wrong ones (`status` 401,
    or S3's InvalidAccessKeyId / SignatureDoesNotMatch), or an account that may not do this
    (403, S3 AccessDenied).  A ServerUnavailable because every place that turns "this server
    cannot be used" into one line without a traceback (the CLI, a failed step that Prefect must
    not retry, a promotion left pending) must treat it alike; it is never retried itself.

    Attributes: server, url, account (the user name or access key id sent; None when none was
    sent), status (401 or 403), fix (`missing_env.role_fix`), last (the library's error)."""

    def __init__(self, server: str, url: str, account: Optional[str], status: int, what: str,
                 last: BaseException, fix: str):
        self.server, self.url, self.tries, self.seconds, self.last = server, url, 1, None, last
        self.account, self.status, self.fix = account, status, fix
        RuntimeError.__init__(self, f"{server} at {url} {what}: {fix}")


# which team role to name in the fix, by server: (role, what another role is for)
_ROLE_OF = {MLFLOW: ("pipeline", "`--role viewer` to read only"),
            PREFECT: ("pipeline", ""),
            S3: ("pipeline", "`--role reader` to read releases only")}
_MLFLOW_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_S3_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_S3_REFUSALS = {"InvalidAccessKeyId": 401, "SignatureDoesNotMatch": 401, "AccessDenied": 403,
                "Forbidden": 403, "403": 403}


def refused(exc: BaseException) -> Optional[ServerRefused]:
    """A ServerRefused for `exc` (or an exception it was raised from) when a server refused
    this client's credentials or account: MLflow's UNAUTHENTICATED (401) / PERMISSION_DENIED
    (403), Prefect's client 401/403, S3's InvalidAccessKeyId, SignatureDoesNotMatch,
    AccessDenied, 403.  None for anything else (an existing ServerRefused is returned as is).
    The account named is the one os.environ sends (never a password)."""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ServerRefused):
            return e
        package = type(e).__module__.split(".")[0]
        code = getattr(e, "error_code", None)
        if package == "mlflow" and code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            import re

            endpoint = re.search(r"endpoint (\S+)", str(e))
            return refusal(MLFLOW, 401 if code == "UNAUTHENTICATED" else 403, e,
                           action=f"call {endpoint.group(1)}" if endpoint else "")
        status = getattr(getattr(e, "response", None), "status_code", None)
        if package in ("httpx", "prefect") and status in (401, 403):
            return refusal(PREFECT, status, e)
        if package == "botocore" and isinstance(getattr(e, "response", None), dict):
            s3_code = str(e.response.get("Error", {}).get("Code", ""))
            if s3_code in _S3_REFUSALS:
                return refusal(S3, _S3_REFUSALS[s3_code], e, code=s3_code,
                               action=getattr(e, "operation_name", "") or "")
        e = e.__cause__ or e.__context__
    return None


def refusal(server: str, status: int, last: BaseException, *, code: str = "", action: str = "",
            environ=None) -> ServerRefused:
    """The ServerRefused of `server` (MLFLOW, PREFECT or S3) answering `status` (401: no or
    wrong credentials; 403: the account may not `action`) to a client whose settings are
    `environ` (default os.environ); `code` is S3's error code.  The line names the server, its
    URL, the account sent (user name or access key id, never a secret) and the fix."""
    from tasks.adapters.missing_env import role_fix

    env = os.environ if environ is None else environ
    role, other = _ROLE_OF[server]
    may_not = f": it may not {action}" if action else ""
    if server == MLFLOW:
        url, user, variables = env.get("MLFLOW_TRACKING_URI", "(MLflow default tracking URI)"), \
            env.get("MLFLOW_TRACKING_USERNAME") or None, _MLFLOW_VARS
        if status == 403:
            what = (f"refused account {user!r} (403 PERMISSION_DENIED{may_not})" if user else
                    "refused an anonymous request (403 PERMISSION_DENIED)")
            other = ""
        else:
            if user in ("pipeline", "viewer"):   # the account's own settings
                role, other = user, ("`--role pipeline` to change the registry" if user == "viewer" else other)
            what = (f"refused the password of account {user!r} (401 UNAUTHENTICATED)" if user else
                    "wants an account (401 UNAUTHENTICATED) and MLFLOW_TRACKING_USERNAME is not set")
    elif server == PREFECT:
        url, auth, variables = env.get("PREFECT_API_URL", "(PREFECT_API_URL not set)"), \
            env.get("PREFECT_API_AUTH_STRING") or "", ["PREFECT_API_AUTH_STRING"]
        user = auth.partition(":")[0] or None
        what = (f"refused the API auth string of user {user!r} ({status})" if auth else
                f"wants an API auth string ({status}) and PREFECT_API_AUTH_STRING is not set")
    else:
        url = next((env[var] for var in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
                    if env.get(var)), "(default AWS endpoint)")
        user, variables = env.get("AWS_ACCESS_KEY_ID") or None, _S3_VARS
        if status == 401 and not env.get("MLFLOW_TRACKING_URI"):
            # S3 settings alone are the reader's (serving code): its own keys are the fix
            role, other = "reader", "`--role pipeline` to write"
        if code == "InvalidAccessKeyId":
            what = f"does not know access key {user!r} (InvalidAccessKeyId)"
        elif code == "SignatureDoesNotMatch":
            what = f"refused the secret key of access key {user!r} (SignatureDoesNotMatch)"
        else:
            what = f"refused access key {user!r} ({code or status}{may_not})"
    return ServerRefused(server, url, user, status, what, last, role_fix(variables, role, other))


@dataclass(frozen=True)
class RetryPolicy:
    """How long `retry_call` keeps trying: `attempts` tries in all, waits doubling from `base_s`
    seconds, each at most `max_wait_s`, their sum at most `max_total_s` (the budget wins over
    `attempts`). Defaults: 5 tries, waits 1, 2, 4, 8 s (15 s)."""

    attempts: int = 5
    base_s: float = 1.0
    max_wait_s: float = 16.0
    max_total_s: float = 60.0

    def __post_init__(self):
        if self.attempts < 1 or self.base_s < 0 or self.max_wait_s < 0 or self.max_total_s < 0:
            raise ValueError(f"retry policy needs attempts >= 1 and waits >= 0, got {self}")

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """Defaults overridden by DMOPS_RETRY_ATTEMPTS / _BASE_S / _MAX_WAIT_S / _MAX_TOTAL_S.
        Raises ValueError naming the variable when a value is not a number in range."""
        values: dict = {}
        for field, var in ENV.items():
            raw = os.environ.get(var)
            if not raw:
                continue
            try:
                values[field] = int(raw) if field == "attempts" else float(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a number") from None
            if values[field] < (1 if field == "attempts" else 0):
                raise ValueError(f"{var}={raw!r} is out of range ({'>= 1' if field == 'attempts' else '>= 0'})")
        return cls(**values)

    def wait(self, i: int) -> float:
        """The wait in seconds after the (i+1)-th failure, unbounded in count: base_s x 2^i,
        at most max_wait_s."""
        return min(self.base_s * 2 ** i, self.max_wait_s)

    def waits(self) -> Iterator[float]:
        """The waits between tries, in seconds: at most attempts - 1 of them, summing to at
        most max_total_s (a wait that would pass the budget ends the series)."""
        spent = 0.0
        for i in range(self.attempts - 1):
            wait = self.wait(i)
            if spent + wait > self.max_total_s:
                return
            spent += wait
            yield wait


def boto_config(max_attempts: int = 3, **options):
    """A botocore Config for the stack's S3 store: path-style addressing (bucket.127.0.0.1
    does not resolve), short connect timeout, "standard" retry mode with `max_attempts` tries
    in all (botocore's default: waits below 1 and 2 s with full jitter).  Kept short because
    `retry_call` adds the long waits on top, and the two layers multiply: a dead store is
    reported within about half a minute.  Extra `options` go to Config."""
    from botocore.config import Config

    # total_max_attempts counts every try; botocore's "max_attempts" would mean retries + 1
    return Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                  retries={"mode": "standard", "total_max_attempts": max_attempts}, **options)


def s3_url_from_env() -> str:
    """The S3 endpoint the environment names (AWS_ENDPOINT_URL_S3, MLFLOW_S3_ENDPOINT_URL,
    AWS_ENDPOINT_URL), for messages; "(default AWS endpoint)" when none is set."""
    for var in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return "(default AWS endpoint)"


def mlflow_url_from_env() -> str:
    """The MLflow tracking server the environment names (MLFLOW_TRACKING_URI), for messages."""
    return os.environ.get("MLFLOW_TRACKING_URI", "(MLflow default tracking URI)")


def bound_client_env(environ=None) -> dict[str, str]:
    """Export the bounded client settings (`MLFLOW_RETRY_ENV`, `PREFECT_RETRY_ENV`) into
    `environ` (default os.environ) where they are not set already (a user's own settings win);
    returns the ones it set.  MLflow reads its settings at every request, so calling this
    before the first one suffices (the flow does); Prefect reads its settings when it is
    imported, so for those to apply a process must call this before importing prefect (and a
    worker passes its environment on to the flow runs it starts)."""
    environ = os.environ if environ is None else environ
    added = {key: value for key, value in {**MLFLOW_RETRY_ENV, **PREFECT_RETRY_ENV}.items()
             if not environ.get(key)}
    environ.update(added)
    return added


# DVC's S3 client (s3fs over aiobotocore) retries each request 5 times itself, and botocore's
# legacy mode 5 times under that; botocore's standard mode with 3 tries in all keeps a dead store
# from costing minutes per command.  Passed to DVC's commands, where the user has not set them.
DVC_RETRY_ENV = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "3"}


def dvc_client_env(environ=None) -> dict[str, str]:
    """The variables of DVC_RETRY_ENV that `environ` (default os.environ) does not set, for a
    DVC subprocess's environment."""
    environ = os.environ if environ is None else environ
    return {key: value for key, value in DVC_RETRY_ENV.items() if not environ.get(key)}


def mlflow_unavailable(e: BaseException, url: Optional[str] = None) -> Optional[ServerUnavailable]:
    """A ServerUnavailable naming the MLflow server (`url`, default MLFLOW_TRACKING_URI) for `e`,
    an error of an MLflow client request that already used MLflow's own retries, when it is
    transient (connection refused or reset, a timeout, HTTP 5xx), or the ServerRefused of a
    request MLflow refused (401/403: `refused`); None for any other error (including one of
    another server, and a ServerUnavailable already made)."""
    if not isinstance(e, ServerUnavailable) and raised_by(e, ("mlflow",)):
        denied = refused(e)
        if denied is not None and denied.server == MLFLOW:
            return denied
    if isinstance(e, ServerUnavailable) or not is_transient(e) or not raised_by(e, ("mlflow",)):
        return None
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    tries = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() + 1
    if "/mlflow-artifacts/" in str(e) and not _is_connection_failure(_root_of_mlflow_error(e)):
        # the server answered (HTTP 5xx) on its artifact proxy: what failed is most likely the
        # store it writes artifacts to
        return ServerUnavailable(MLFLOW, url or mlflow_url_from_env(), tries, None, e,
                                 detail="it answers, but could not store or serve artifacts",
                                 fix=f"check its artifact store (for the local stack the {S3} at "
                                     f"{s3_url_from_env()}: `dmops status`; `dmops up` starts it)")
    return ServerUnavailable(MLFLOW, url or mlflow_url_from_env(), tries, None, e)


def _is_connection_failure(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    return type(e).__name__ in ("NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                                "ProtocolError")


def raised_by(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """True when `exc` or an exception in its chain comes from one of `packages`."""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__module__.split(".")[0] in packages:
            return True
        e = e.__cause__ or e.__context__
    return False


def mlflow_call(fn: Callable[..., T], *args, policy: Optional[RetryPolicy] = None, **kwargs) -> T:
    """`fn(*args, **kwargs)` against the MLflow server the environment names, through
    `retry_call`; only for requests that are safe to send again."""
    return retry_call(fn, *args, server=MLFLOW, url=mlflow_url_from_env(), policy=policy, **kwargs)


def retry_call(fn: Callable[..., T], *args, server: str, url: str, policy: Optional[RetryPolicy] = None,
               log: Optional[Callable[[str], None]] = None, sleep: Callable[[float], None] = time.sleep,
               **kwargs) -> T:
    """`fn(*args, **kwargs)`, tried again after each transient error (`is_transient`) with the
    waits of `policy` (default `RetryPolicy.from_env()`).

    `server` and `url` name the server in progress lines (through `log`, default: stderr) and
    in the final error. Returns fn's result. Raises ServerUnavailable (chained to the last
    error) once the tries or the time budget are used up; for `server` MLFLOW, ServerRefused
    (chained) at once when it refused the client's credentials or account (`refused`); any
    other error is raised at once, unchanged (an S3 refusal stays botocore's ClientError: its
    callers read the codes, and `release.read_release` words it)."""
    policy = policy or RetryPolicy.from_env()
    log = log or _to_stderr
    waits = policy.waits()
    t0 = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e):
                # MLflow's refusals only: S3 callers read ClientError's codes themselves
                denied = refused(e) if server == MLFLOW and not isinstance(e, ServerUnavailable) else None
                if denied is not None:
                    raise denied from e
                raise
            wait = next(waits, None)
            if wait is None:
                raise ServerUnavailable(server, url, tries, time.monotonic() - t0, e) from e
            log(f"{server} at {url}: {describe(e)} (try {tries} of {policy.attempts}); "
                 f"retrying in {wait:.1f} s")
            sleep(wait)


def is_transient(exc: BaseException) -> bool:
    """True when `exc`, or an exception it was raised from or while handling, says the server
    could not answer for now: connection refused/reset/closed, a timeout, HTTP 408/429/5xx,
    S3 InternalError/ServiceUnavailable/SlowDown, MLflow TEMPORARILY_UNAVAILABLE, a client's
    "max retries exceeded". False for everything else (403, NoSuchKey, bad input, a
    ServerUnavailable that already used its budget)."""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, ServerUnavailable):
            return False
        seen.add(id(e))
        if _transient_here(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _transient_here(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    if isinstance(e, urllib.error.HTTPError):
        return e.code in _TRANSIENT_STATUS
    if isinstance(e, urllib.error.URLError):
        return isinstance(e.reason, (ConnectionError, TimeoutError, socket.timeout))
    name = type(e).__module__.split(".")[0]
    if name == "botocore":
        return _botocore_transient(e)
    if name in ("requests", "urllib3", "http"):
        return _http_library_transient(e)
    if name == "mlflow":
        return str(getattr(e, "error_code", "")) in _TRANSIENT_MLFLOW_CODES
    return False


def _botocore_transient(e: BaseException) -> bool:
    from botocore import exceptions as b

    if isinstance(e, (b.ConnectionError, b.HTTPClientError, b.IncompleteReadError)):
        return True
    if isinstance(e, b.ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in _TRANSIENT_STATUS or e.response.get("Error", {}).get("Code") in _TRANSIENT_S3_CODES
    return False


def _http_library_transient(e: BaseException) -> bool:
    import http.client

    import requests
    import urllib3

    if isinstance(e, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                      requests.exceptions.ChunkedEncodingError)):
        return True
    if isinstance(e, requests.HTTPError):
        return e.response is not None and e.response.status_code in _TRANSIENT_STATUS
    if isinstance(e, (urllib3.exceptions.MaxRetryError, urllib3.exceptions.ProtocolError,
                      urllib3.exceptions.TimeoutError, urllib3.exceptions.NewConnectionError)):
        return True
    return isinstance(e, (http.client.IncompleteRead, http.client.RemoteDisconnected))


def _root_of_mlflow_error(e: BaseException) -> BaseException:
    """MLflow's client error embeds the whole urllib3 chain in one long message ("API request to
    ... failed with exception HTTPConnectionPool(...): Max retries exceeded ..."); the innermost
    error (e.g. ConnectionRefusedError) says the same in a few words.  Other errors unchanged."""
    if type(e).__module__.split(".")[0] != "mlflow":
        return e
    seen = {id(e)}
    while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
        e = e.__cause__ or e.__context__
        seen.add(id(e))
    return e


def describe(e: BaseException) -> str:
    """'<type>: <first line of the message>', at most 300 characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
