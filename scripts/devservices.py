"""Real local services for the demo and the tests, started and stopped by PID on 127.0.0.1.

    python scripts/devservices.py start [--run-dir DIR] [SERVICE ...]   # prints the state JSON
    python scripts/devservices.py stop  [--run-dir DIR]
    python scripts/devservices.py env   [--run-dir DIR]                 # shell exports of connections

Services: opensearch (Maven Central integ-test zip on the machine's JDK 17), sftp (private OpenSSH
sshd, internal-sftp, key auth, generated host/client keys), s3 (moto_server), gcs
(gcp-storage-emulator), postgres (temp cluster), smtp (aiosmtpd Maildir sink), webhook (receiver
that stores each POST as a JSON file). Every start waits for readiness and fails with the service's
log tail when it cannot start. Each service runs in its own process group; stop signals that group
by the PID recorded in ``state.json`` — never by process name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("devservices")

OPENSEARCH_VERSION = os.environ.get("CDP_OPENSEARCH_VERSION", "2.19.3")
ELASTICSEARCH_VERSION = os.environ.get("CDP_ELASTICSEARCH_VERSION", "7.17.28")
SEARCH_ENGINES = {
    "opensearch": {"version": OPENSEARCH_VERSION, "env": "OPENSEARCH",
                   "artifact": "org.opensearch.distribution.integ-test-zip:opensearch:{v}:zip"},
    "elasticsearch": {"version": ELASTICSEARCH_VERSION, "env": "ES",
                      "artifact": "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{v}:zip"},
}
SERVICE_USER = "cdpsvc"  # created by scripts/bootstrap.sh; OpenSearch/PostgreSQL refuse root
ALL_SERVICES = ("opensearch", "sftp", "s3", "gcs", "postgres", "smtp", "webhook")
OPTIONAL_SERVICES = ("elasticsearch",)  # started only when asked for by name
VENV_BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


class ServiceError(RuntimeError):
    """A service could not be started; the message says which and why."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    log_file: str
    info: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_dir() -> Path:
    base = os.environ.get("CDP_CACHE_DIR")
    if base:
        return Path(base)
    # /root is private, and the service user must read the OpenSearch install.
    return Path("/var/cache/cdp-ingest") if os.geteuid() == 0 else Path.home() / ".cache" / "cdp-ingest"


def _service_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError as e:
        raise ServiceError(f"user {SERVICE_USER!r} is missing: run scripts/bootstrap.sh first") from e


def _chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for parent in path.resolve().parents:  # the service user must be able to walk down to its folder
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            raise ServiceError(f"{parent} is not traversable by others (mode {oct(os.stat(parent).st_mode)[-3:]}); "
                               f"{user.pw_name} could not reach {path}: use a run dir under a world-traversable "
                               "folder such as /tmp")
    for p in [path, *path.rglob("*")]:
        os.lchown(p, user.pw_uid, user.pw_gid)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except OSError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Harness:
    """Starts services into ``run_dir`` and records them in ``run_dir/state.json``."""

    def __init__(self, run_dir: Path | str | None = None):
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="cdp-services-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        self.state_file = self.run_dir / "state.json"
        self.services: dict[str, Service] = {}
        if self.state_file.exists():
            for name, d in json.loads(self.state_file.read_text()).items():
                self.services[name] = Service(**d)

    # ---- bookkeeping -------------------------------------------------------------------
    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: asdict(s) for n, s in self.services.items()}, indent=2))
        tmp.replace(self.state_file)

    def _spawn(self, name: str, argv: list[str], *, user: pwd.struct_passwd | None = None,
               env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen, Path]:
        log_file = self.run_dir / f"{name}.log"
        out = open(log_file, "ab")
        kwargs: dict = {}
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
            os.chown(log_file, user.pw_uid, user.pw_gid)
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd or self.run_dir, start_new_session=True, **kwargs,
        )
        out.close()
        return proc, log_file

    def _wait(self, name: str, proc: subprocess.Popen, log_file: Path, ready: Callable[[], bool],
              timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise ServiceError(f"{name} exited with code {proc.returncode} during start-up; "
                                   f"log tail:\n{_tail(log_file)}")
            if ready():
                return time.monotonic() - t0
            time.sleep(0.25)
        _kill_group(proc.pid)
        raise ServiceError(f"{name} not ready after {timeout:.0f} s; log tail:\n{_tail(log_file)}")

    def _register(self, name: str, proc: subprocess.Popen, port: int, log_file: Path, started: float,
                  **info) -> Service:
        svc = Service(name, proc.pid, port, str(log_file), {**info, "start_seconds": round(started, 2)})
        self.services[name] = svc
        self._save()
        log.info("%s ready on 127.0.0.1:%s in %.1f s (pid %s)", name, port, started, proc.pid)
        return svc

    def start(self, names: list[str] | tuple[str, ...] = ALL_SERVICES) -> dict[str, Service]:
        for name in names:
            if name in self.services and _alive(self.services[name].pid):
                continue
            getattr(self, f"start_{name}")()
        return self.services

    def restart(self, name: str, *, down_seconds: float = 0.0, kill: bool = False, timeout: float = 180) -> Service:
        """Stop one service (SIGTERM to its process group, by PID; ``kill``: SIGKILL, no clean shutdown),
        leave it down ``down_seconds``, then start it again on the same port(s) with the same data: a
        short outage, for fault tests. OpenSearch and Elasticsearch only."""
        svc = self.services[name]
        if name not in SEARCH_ENGINES:
            raise ServiceError(f"restart supports {sorted(SEARCH_ENGINES)}, not {name}")
        if kill:
            try:
                os.killpg(svc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 20
            while not _gone(svc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            _kill_groups([svc.pid])
        log.info("%s %s (pid %s) for a restart on port %s", "killed" if kill else "stopped", name, svc.pid, svc.port)
        time.sleep(down_seconds)
        return self._start_search(name, svc.info.get("heap", "1g"), timeout, port=svc.port,
                                  tport=svc.info.get("transport_port"))

    def stop(self) -> None:
        pids = [svc.pid for svc in self.services.values()]
        _kill_groups(pids)
        for name, svc in self.services.items():
            log.info("stopped %s (pid %s)", name, svc.pid)
        self.services.clear()
        self._save()

    # ---- OpenSearch ------------------------------------------------------------------------
    def search_home(self, product: str) -> Path:
        """The unpacked integ-test distribution, fetched from Maven Central once and cached."""
        spec = SEARCH_ENGINES[product]
        version = spec["version"]
        home = cache_dir() / f"{product}-{version}"
        if (home / "bin" / product).exists():
            return home
        artifact = spec["artifact"].format(v=version)
        group, name = artifact.split(":")[:2]
        zip_path = (Path.home() / ".m2" / "repository" / group.replace(".", "/") / name / version
                    / f"{name}-{version}.zip")
        if not zip_path.exists():
            log.info("fetching %s from Maven Central", artifact)
            r = subprocess.run(["mvn", "-q", "-B", "dependency:get", f"-Dartifact={artifact}",
                                "-Dtransitive=false"], capture_output=True, text=True, cwd=tempfile.gettempdir())
            if r.returncode != 0 or not zip_path.exists():
                raise ServiceError(f"cannot resolve {artifact}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        staging = Path(tempfile.mkdtemp(prefix=f"{product}-unpack-", dir=_ensure_dir(cache_dir())))
        with zipfile.ZipFile(zip_path) as z:
            for member in z.infolist():
                target = z.extract(member, staging)
                mode = (member.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(target, mode)
        os.chmod(staging, 0o755)
        (staging / f"{product}-{version}").rename(home)
        staging.rmdir()
        return home

    def start_opensearch(self, heap: str = "1g", timeout: float = 180) -> Service:
        return self._start_search("opensearch", heap, timeout)

    def start_elasticsearch(self, heap: str = "1g", timeout: float = 180) -> Service:
        return self._start_search("elasticsearch", heap, timeout)

    def _start_search(self, product: str, heap: str, timeout: float, port: int | None = None,
                      tport: int | None = None) -> Service:
        spec = SEARCH_ENGINES[product]
        home = self.search_home(product)
        user = _service_user()
        base = self.run_dir / product
        conf = base / "config"
        shutil.copytree(home / "config", conf, dirs_exist_ok=True)
        # jvm.options points GC logs and heap dumps at paths relative to the install, which the
        # service user may not write: point them into this run's folder.
        jvm = conf / "jvm.options"
        jvm.write_text(jvm.read_text().replace("logs/", f"{base}/logs/").replace("HeapDumpPath=data",
                                                                                 f"HeapDumpPath={base}/data"))
        (base / "data").mkdir(exist_ok=True)
        (base / "logs").mkdir(exist_ok=True)
        (base / "tmp").mkdir(exist_ok=True)  # its java.io.tmpdir (else a fresh /tmp/<product>-<n> each start)
        _chown_tree(base, user)
        port, tport = port or free_port(), tport or free_port()
        java_home = os.environ.get("JAVA_HOME") or str(Path(os.path.realpath(shutil.which("java") or
                                                                               "/usr/bin/java")).parents[1])
        env_prefix = spec["env"]
        env = {
            f"{env_prefix}_PATH_CONF": str(conf),
            f"{env_prefix}_JAVA_HOME": java_home,
            "JAVA_HOME": java_home,
            f"{env_prefix}_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
            f"{env_prefix}_TMPDIR": str(base / "tmp"),
        }
        argv = [str(home / "bin" / product),
                "-E", "discovery.type=single-node", "-E", "network.host=127.0.0.1",
                "-E", f"http.port={port}", "-E", f"transport.port={tport}",
                "-E", f"path.data={base / 'data'}", "-E", f"path.logs={base / 'logs'}",
                "-E", "cluster.routing.allocation.disk.threshold_enabled=false",
                "-E", "action.auto_create_index=true"]
        proc, log_file = self._spawn(product, argv, user=user, env=env, cwd=base)
        url = f"http://127.0.0.1:{port}"
        took = self._wait(product, proc, log_file,
                          lambda: _http_ok(f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s"), timeout)
        return self._register(product, proc, port, log_file, took, url=url, version=spec["version"], heap=heap,
                              transport_port=tport)

    # ---- SFTP (private sshd) --------------------------------------------------------------
    def start_sftp(self, timeout: float = 20) -> Service:
        base = self.run_dir / "sftp"
        landing = base / "landing"
        landing.mkdir(parents=True, exist_ok=True)
        keys = base / "keys"
        keys.mkdir(exist_ok=True)
        for key in ("host_ed25519", "client_ed25519"):
            if not (keys / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"cdp-{key}",
                                "-f", str(keys / key)], check=True)
        login = pwd.getpwuid(os.geteuid()).pw_name
        (keys / "authorized_keys").write_text((keys / "client_ed25519.pub").read_text())
        port = free_port()
        host_pub = (keys / "host_ed25519.pub").read_text().split()
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        config = base / "sshd_config"
        config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {keys / 'host_ed25519'}
PidFile {base / 'sshd.pid'}
AuthorizedKeysFile {keys / 'authorized_keys'}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowUsers {login}
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d {landing}
LogLevel VERBOSE
""")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        proc, log_file = self._spawn("sftp", ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)])
        took = self._wait("sftp", proc, log_file, lambda: _port_open(port), timeout)
        return self._register("sftp", proc, port, log_file, took, login=login, landing=str(landing),
                              private_key=str(keys / "client_ed25519"), known_hosts=str(keys / "known_hosts"),
                              host_key=f"{host_pub[0]} {host_pub[1]}")

    # ---- S3 / GCS emulators ------------------------------------------------------------
    def start_s3(self, timeout: float = 30) -> Service:
        port = free_port()
        proc, log_file = self._spawn("s3", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
        url = f"http://127.0.0.1:{port}"
        took = self._wait("s3", proc, log_file, lambda: _http_ok(f"{url}/moto-api/"), timeout)
        return self._register("s3", proc, port, log_file, took, endpoint_url=url)

    def start_gcs(self, timeout: float = 30) -> Service:
        port = free_port()
        proc, log_file = self._spawn("gcs", [str(VENV_BIN / "gcp-storage-emulator"), "start", "-H", "127.0.0.1",
                                             "--port", str(port), "--in-memory"])
        url = f"http://127.0.0.1:{port}"
        took = self._wait("gcs", proc, log_file, lambda: _http_ok(f"{url}/storage/v1/b?project=test"), timeout)
        return self._register("gcs", proc, port, log_file, took, endpoint_url=url)

    # ---- PostgreSQL -----------------------------------------------------------------------
    def start_postgres(self, timeout: float = 60) -> Service:
        bindir = _pg_bindir()
        user = _service_user()
        if user is not None:
            user = pwd.getpwnam("postgres") if _user_exists("postgres") else user
        base = self.run_dir / "postgres"
        data = base / "data"
        base.mkdir(exist_ok=True)
        _chown_tree(base, user)
        if not (data / "PG_VERSION").exists():
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
            r = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                "-E", "UTF8", "--locale=C.UTF-8"], capture_output=True, text=True, **kwargs)
            if r.returncode != 0:
                raise ServiceError(f"initdb failed: {r.stdout[-1500:]}{r.stderr[-1500:]}")
        port = free_port()
        proc, log_file = self._spawn("postgres", [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                                                  "-c", "listen_addresses=127.0.0.1",
                                                  "-c", f"unix_socket_directories={base}",
                                                  "-c", "fsync=off"], user=user)
        took = self._wait("postgres", proc, log_file, lambda: subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode == 0,
            timeout)
        return self._register("postgres", proc, port, log_file, took, user="postgres",
                              dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres")

    # ---- SMTP sink and webhook receiver ------------------------------------------------
    def start_smtp(self, timeout: float = 20) -> Service:
        maildir = self.run_dir / "smtp" / "maildir"
        maildir.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        proc, log_file = self._spawn("smtp", [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
                                              "-c", "aiosmtpd.handlers.Mailbox", str(maildir)])
        took = self._wait("smtp", proc, log_file, lambda: _port_open(port), timeout)
        return self._register("smtp", proc, port, log_file, took, maildir=str(maildir))

    def start_webhook(self, timeout: float = 20) -> Service:
        inbox = self.run_dir / "webhook" / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        port = free_port()
        token = os.urandom(12).hex()
        proc, log_file = self._spawn("webhook", [sys.executable, str(HERE / "webhook_receiver.py"),
                                                 "--port", str(port), "--inbox", str(inbox), "--token", token])
        url = f"http://127.0.0.1:{port}"
        took = self._wait("webhook", proc, log_file, lambda: _http_ok(f"{url}/health"), timeout)
        return self._register("webhook", proc, port, log_file, took, url=url, inbox=str(inbox), token=token)

    # ---- Airflow connections -----------------------------------------------------------------
    def airflow_connections(self) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` environment variables (JSON form) for the running services."""
        conns: dict[str, dict] = {}
        s = self.services
        if "opensearch" in s:
            conns["cdp_opensearch"] = {"conn_type": "opensearch", "host": "127.0.0.1", "port": s["opensearch"].port,
                                       "schema": "http", "extra": {"use_ssl": False}}
        if "elasticsearch" in s:
            conns["cdp_elasticsearch"] = {"conn_type": "elasticsearch", "host": "127.0.0.1",
                                          "port": s["elasticsearch"].port, "extra": {"use_ssl": False}}
        if "sftp" in s:
            i = s["sftp"].info
            conns["cdp_sftp"] = {"conn_type": "sftp", "host": "127.0.0.1", "port": s["sftp"].port,
                                 "login": i["login"],
                                 "extra": {"key_file": i["private_key"], "host_key": i["host_key"],
                                           "no_host_key_check": False}}
        if "s3" in s:
            conns["cdp_s3"] = {"conn_type": "aws", "login": "testing", "password": "testing",
                               "extra": {"endpoint_url": s["s3"].info["endpoint_url"], "region_name": "us-east-1"}}
        if "gcs" in s:
            conns["cdp_gcs"] = {"conn_type": "google_cloud_platform",
                                "extra": {"is_anonymous": True, "project": "cdp-test"}}
        if "postgres" in s:
            conns["cdp_postgres"] = {"conn_type": "postgres", "host": "127.0.0.1", "port": s["postgres"].port,
                                     "login": "postgres", "schema": "postgres"}
        if "smtp" in s:
            conns["cdp_smtp"] = {"conn_type": "smtp", "host": "127.0.0.1", "port": s["smtp"].port,
                                 "extra": {"disable_ssl": True, "disable_tls": True,
                                           "from_email": "cdp-ingest@localhost"}}
        if "webhook" in s:
            conns["cdp_webhook"] = {"conn_type": "http", "host": s["webhook"].info["url"],
                                    "password": s["webhook"].info["token"]}
        env = {f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in conns.items()}
        if "gcs" in s:
            env["STORAGE_EMULATOR_HOST"] = s["gcs"].info["endpoint_url"]
            env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
        return env


def _ensure_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, os.stat(p).st_mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return p


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _pg_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not candidates:
        raise ServiceError("PostgreSQL server binaries not found: run scripts/bootstrap.sh (apt package postgresql)")
    return candidates[-1].parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie not yet reaped by its (new) parent has exited all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _gone(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return True
    except ChildProcessError:  # not our child (started by another CLI call)
        pass
    return not _alive(pid)


def _kill_groups(pids: list[int], grace: float = 20) -> None:
    """SIGTERM each process group led by a PID in ``pids``; SIGKILL what is left after ``grace`` s."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    waiting = list(pids)
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if not _gone(p)]
        time.sleep(0.05)
    for pid in pids:  # children of a leader that exited first still share its group
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_group(pid: int) -> None:
    _kill_groups([pid])


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["start", "stop", "env", "status"])
    ap.add_argument("services", nargs="*", default=list(ALL_SERVICES))
    ap.add_argument("--run-dir", default=os.environ.get("CDP_SERVICES_DIR", ".run/services"))
    args = ap.parse_intermixed_args(argv)
    h = Harness(Path(args.run_dir).resolve())
    if args.command == "start":
        unknown = set(args.services) - set(ALL_SERVICES) - set(OPTIONAL_SERVICES)
        if unknown:
            ap.error(f"unknown services {sorted(unknown)}; choose from {ALL_SERVICES + OPTIONAL_SERVICES}")
        try:
            h.start(args.services)
        except ServiceError as e:
            log.error("%s", e)
            h.stop()
            return 1
        sys.stdout.write(h.state_file.read_text() + "\n")
    elif args.command == "stop":
        h.stop()
    elif args.command == "env":
        for k, v in h.airflow_connections().items():
            sys.stdout.write(f"export {k}={_shell_quote(v)}\n")
    else:
        for name, svc in h.services.items():
            sys.stdout.write(f"{name:11} pid={svc.pid:<8} port={svc.port:<6} alive={_alive(svc.pid)}\n")
    return 0


def _shell_quote(v: str) -> str:
    return "'" + v.replace("'", "'\"'\"'") + "'"


if __name__ == "__main__":
    sys.exit(main())
