"""A small Python client for the datasets REST API (``/cdp-datasets/api`` on the Airflow api-server).

    from cdp_ingest.datasets.client import DatasetsClient

    api = DatasetsClient("http://127.0.0.1:8080", username="admin", password="...")
    ds = api.create("orders", source="https://example.com/orders.csv.gz", sync_interval=3600)  # waits ≤ 10 min
    api.jobs(dataset="orders", state="failure")
    api.sync("orders", wait=True)
    api.delete("orders")

Authentication: a bearer token from ``POST /auth/token`` (Airflow's simple auth manager) with the username
and password, or a token given directly. Defaults come from ``CDP_API_URL``, ``CDP_API_USER``,
``CDP_API_PASSWORD`` and ``CDP_API_TOKEN``. Only the standard library is used.
"""

from __future__ import annotations

import builtins
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from cdp_ingest.datasets.spec import check_sync_interval

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_WAIT = 600.0
PREFIX = "/cdp-datasets/api"


class ApiError(Exception):
    """The API refused a request: HTTP ``status``, a stable ``code`` and its ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} [{code}] {message}" if status else f"[{code}] {message}")
        self.status, self.code, self.message = status, code, message


class JobError(Exception):
    """A job ended in failure, or did not end in time; carries the job id and its last state."""

    def __init__(self, job: dict[str, Any], message: str):
        super().__init__(message)
        self.job = job
        self.job_id = job.get("job_id")
        self.state = job.get("state")
        self.error_code = job.get("error_code")
        self.error_message = job.get("error_message")


class DatasetsClient:
    def __init__(self, base_url: str | None = None, *, username: str | None = None, password: str | None = None,
                 token: str | None = None, timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep):
        self.base_url = (base_url or os.environ.get("CDP_API_URL") or DEFAULT_URL).rstrip("/")
        self.username = username or os.environ.get("CDP_API_USER")
        self.password = password or os.environ.get("CDP_API_PASSWORD")
        self._token = token or os.environ.get("CDP_API_TOKEN")
        self.timeout = timeout
        self._sleep = sleep

    # ---- transport -------------------------------------------------------------------------------------
    def token(self) -> str:
        if not self._token:
            if not (self.username and self.password):
                raise ApiError(0, "no_credentials", "give a token, or a username and password (CDP_API_USER, "
                                                      "CDP_API_PASSWORD)")
            resp = self._call("POST", "/auth/token", {"username": self.username, "password": self.password},
                              auth=False)
            self._token = resp["access_token"]
        return self._token

    def _call(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
              auth: bool = True) -> Any:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # the base URL is the caller's
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail = json.loads(raw).get("detail")
            except ValueError:
                detail = raw.decode(errors="replace")[:500]
            if isinstance(detail, dict):
                raise ApiError(e.code, str(detail.get("code", "error")), str(detail.get("message", detail))) from None
            raise ApiError(e.code, "http_error", str(detail)) from None
        except urllib.error.URLError as e:
            raise ApiError(0, "unreachable", f"{self.base_url}: {e.reason}") from None
        return json.loads(raw) if raw else None

    # ---- datasets --------------------------------------------------------------------------------------
    def create(self, name: str, source: str | dict[str, Any], *, target: str | dict[str, Any] = "raw",
               sync_interval: int | None = None, format: str | None = None, watermark_column: str | None = None,
               watermark_lookback: float | None = None, id_column: str | None = None,
               store_conn_id: str | None = None, description: str | None = None,
               wait: bool = True, timeout: float = DEFAULT_WAIT, poll: float = 2.0) -> dict[str, Any]:
        """Create a dataset (its first job starts at once). With ``wait`` (default) wait up to ``timeout``
        seconds for that job and return the dataset; raise ``JobError`` (job id and state) otherwise."""
        check_sync_interval(sync_interval)  # refused here too, with the same message as the API's
        body = {"name": name, "source": source, "target": target, "sync_interval": sync_interval, "format": format,
                "watermark_column": watermark_column, "watermark_lookback": watermark_lookback,
                "id_column": id_column, "store_conn_id": store_conn_id, "description": description}
        created = self._call("POST", f"{PREFIX}/datasets", {k: v for k, v in body.items() if v is not None})
        if not wait:
            return created
        self.wait(created["job_id"], timeout=timeout, poll=poll)
        return self.get(name)

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET", f"{PREFIX}/datasets")["datasets"]

    def get(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"{PREFIX}/datasets/{urllib.parse.quote(name)}")

    def delete(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"{PREFIX}/datasets/{urllib.parse.quote(name)}")

    def sync(self, name: str, *, wait: bool = False, timeout: float = DEFAULT_WAIT, poll: float = 2.0) -> dict:
        """Force a sync (a new job, even when the source did not change)."""
        job = self._call("POST", f"{PREFIX}/datasets/{urllib.parse.quote(name)}/sync")
        return self.wait(job["job_id"], timeout=timeout, poll=poll) if wait else job

    # ---- jobs ------------------------------------------------------------------------------------------
    def jobs(self, *, dataset: str | None = None, state: str | None = None,
             limit: int = 50) -> builtins.list[dict[str, Any]]:
        return self._call("GET", f"{PREFIX}/jobs", params={"dataset": dataset, "state": state, "limit": limit})["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"{PREFIX}/jobs/{urllib.parse.quote(job_id, safe='')}")

    def wait(self, job_id: str, *, timeout: float = DEFAULT_WAIT, poll: float = 2.0) -> dict[str, Any]:
        """Poll a job until it is complete (returned) or failed / still running after ``timeout`` (JobError)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] == "complete":
                return job
            if job["state"] == "failure":
                raise JobError(job, f"job {job_id} failed: [{job.get('error_code')}] {job.get('error_message')}")
            if time.monotonic() >= deadline:
                raise JobError(job, f"job {job_id} is still {job['state']} after {timeout:.0f} s")
            self._sleep(poll)
