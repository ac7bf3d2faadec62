"""A small W3C WebDriver client for Debian's ``chromedriver`` + ``chromium`` (no Selenium needed), and a
helper that starts an Airflow api-server by PID for browser tests.

Chromium runs headless with a fresh profile and no background networking: ``--headless --no-sandbox
--disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update
--disable-sync --user-data-dir=<tmp>``. Everything is stopped by PID (process group) at the end.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900"]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, *, timeout: float = 60, headers: dict | None = None,
         form: bool = False) -> tuple[int, bytes, dict]:
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode() if not form else body.encode()
        hdrs.setdefault("Content-Type", "application/json" if not form else "application/x-www-form-urlencoded")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15) -> None:
    """Stop a process started with ``start_new_session=True`` and its children, by its PID."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


class Browser:
    """One chromedriver process and one headless Chromium session."""

    def __init__(self, download_dir: Path, log_file: Path):
        self.profile = tempfile.mkdtemp(prefix="cdp-chromium-")
        self.port = free_port()
        self.log = open(log_file, "ab")
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=self.log, stderr=self.log,
                                       start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if json.loads(http("GET", f"{self.base}/status", timeout=2)[1])["value"]["ready"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        else:
            self.quit()
            raise RuntimeError("chromedriver did not start")
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": [*CHROME_FLAGS, f"--user-data-dir={self.profile}"],
            "prefs": {"download.default_directory": str(download_dir), "download.prompt_for_download": False}}}}}
        status, body, _ = http("POST", f"{self.base}/session", caps, timeout=90)
        if status != 200:
            self.quit()
            raise RuntimeError(f"chromedriver refused the session: {body[:500]!r}")
        self.session = json.loads(body)["value"]["sessionId"]
        self.cmd("POST", "goog/cdp/execute", {"cmd": "Browser.setDownloadBehavior", "params": {
            "behavior": "allow", "downloadPath": str(download_dir)}})

    def cmd(self, method: str, path: str, body: Any = None) -> Any:
        status, raw, _ = http(method, f"{self.base}/session/{self.session}/{path}",
                              body if body is not None or method != "POST" else {})
        value = json.loads(raw or b"{}").get("value")
        if status != 200:
            raise RuntimeError(f"webdriver {method} {path}: HTTP {status}: {value}")
        return value

    def get(self, url: str) -> None:
        self.cmd("POST", "url", {"url": url})

    @property
    def url(self) -> str:
        return self.cmd("GET", "url")

    def source(self) -> str:
        return self.cmd("GET", "source")

    def find(self, css: str) -> str:
        return self.cmd("POST", "element", {"using": "css selector", "value": css})[ELEMENT]

    def find_all(self, css: str) -> list[str]:
        found = self.cmd("POST", "elements", {"using": "css selector", "value": css})
        if not isinstance(found, list) or any(ELEMENT not in e for e in found):
            raise RuntimeError(f"webdriver elements {css!r}: unexpected answer {found!r}")
        return [e[ELEMENT] for e in found]

    def wait_for(self, css: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_all(css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no element {css!r} at {self.url}")
            time.sleep(0.25)

    def type(self, element: str, text: str) -> None:
        self.cmd("POST", f"element/{element}/clear")
        self.cmd("POST", f"element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self.cmd("POST", f"element/{element}/click")

    def text(self, element: str) -> str:
        return self.cmd("GET", f"element/{element}/text")

    def script(self, js: str, *args: Any) -> Any:
        return self.cmd("POST", "execute/sync", {"script": js, "args": list(args)})

    def async_script(self, js: str, *args: Any) -> Any:
        return self.cmd("POST", "execute/async", {"script": js, "args": list(args)})

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.cmd("GET", "screenshot")))
        return path

    def quit(self) -> None:
        try:
            if getattr(self, "session", None):
                http("DELETE", f"{self.base}/session/{self.session}", timeout=20)
        except OSError:
            pass
        stop_group(self.driver)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class ApiServer:
    """``airflow api-server`` on a free 127.0.0.1 port with this repo's plugins, stopped by PID."""

    def __init__(self, env: dict[str, str], log_file: Path, airflow_bin: str, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**env, "AIRFLOW__API__PORT": str(self.port), "AIRFLOW__API__HOST": "127.0.0.1",
               "AIRFLOW__API__WORKERS": "1"}
        self.log = open(log_file, "ab")
        self.proc = subprocess.Popen([airflow_bin, "api-server", "--port", str(self.port)], env=env,
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api-server exited with {self.proc.returncode}; see {log_file}")
            try:
                if http("GET", f"{self.url}/api/v2/monitor/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"api-server did not answer in {timeout} s; see {log_file}")

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()
