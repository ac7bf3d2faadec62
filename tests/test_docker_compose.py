"""Static checks of docker-compose.yaml (and the Dockerfile it builds), with no Docker engine.

The file is loaded with PyYAML (safe_load resolves the ``x-airflow-common`` anchors and ``<<:`` merge
keys), ``${VAR:-default}`` / ``${VAR:?message}`` references are interpolated the way Compose does
(with the two required secrets set, as an operator's .env would), and the result is
checked for the deployment's invariants. Each check is a function returning a list of problems, so
the ``test_check_catches_*`` tests can prove, on broken copies of the file, that it can fail.

Schema: tests/data/compose-spec.json is vendored unchanged from the PyPI wheel
docker-compose==1.29.2 (compose/config/compose_spec.json, sha256 below; Apache License 2.0,
Copyright 2014 Docker, Inc.; the Compose Specification schema as shipped by Docker's Compose v1).

If the Debian package ``docker-compose`` (Compose 1.29, Python) is installed, ``docker-compose
config -q`` validates the file too: it needs no Docker engine for ``config``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"

INFRA_SERVICES = {"postgres", "redis", "opensearch"}
AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
AIRFLOW_SERVICES = set(AIRFLOW_COMMANDS) | {"airflow-init"}
REQUIRED_SERVICES = INFRA_SERVICES | AIRFLOW_SERVICES
MUST_BE_HEALTHCHECKED = INFRA_SERVICES | set(AIRFLOW_COMMANDS)
VALID_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Host folders that are part of the repo; the others (config, logs, landing) are created at run time.
REPO_MOUNTS = {
    "/opt/airflow/dags": "dags",
    "/opt/airflow/plugins": "plugins",
    "/opt/airflow/include": "include",
}
RUNTIME_MOUNTS = {"/opt/airflow/config", "/opt/airflow/logs", "/opt/airflow/landing"}
OPENSEARCH_IMAGE = "opensearchproject/opensearch:2.19.3"
# Secrets with no safe default: Compose must refuse to start without them (${VAR:?message}).
REQUIRED_SECRETS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET")
# What an operator puts in .env (a syntactically valid Fernet key, used for nothing else).
DEPLOY_ENV = {"AIRFLOW__CORE__FERNET_KEY": "Hu8Cc4CrlkpxuwJHZoc9iYXxEEFvZgo-ovfSp2aT0Ck=",
              "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-jwt-secret-0123456789abcdef"}

Problems = list[str]


# --------------------------------------------------------------------------------------------------
# Loading and Compose-style interpolation
# --------------------------------------------------------------------------------------------------


def load_raw(text: str | None = None) -> dict[str, Any]:
    """The compose document with anchors/merge keys resolved and no object shared between services."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text() if text is None else text)
    assert isinstance(doc, dict), "docker-compose.yaml is not a mapping"
    # safe_load shares merged sub-mappings (e.g. the common environment) between services; a JSON
    # round trip gives each service its own copy so a test can change one without the others.
    return json.loads(json.dumps(doc))


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def var_refs(value: str) -> list[tuple[str, str | None, str | None]]:
    """(name, operator, argument) of every ``$VAR`` / ``${...}`` reference in a string."""
    refs = []
    for m in _VAR.finditer(value):
        if m.group("escaped"):
            continue
        if m.group("named"):
            refs.append((m.group("named"), None, None))
            continue
        b = _BRACED.match(m.group("braced"))
        if not b:
            raise ValueError(f"invalid interpolation ${{{m.group('braced')}}} in {value!r}")
        refs.append((b.group("name"), b.group("op"), b.group("arg")))
    return refs


def interpolate_str(value: str, env: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        b = _BRACED.match(m.group("braced"))
        if not b:
            raise ValueError(f"invalid interpolation ${{{m.group('braced')}}} in {value!r}")
        name, op, arg = b.group("name"), b.group("op"), b.group("arg") or ""
        set_, nonempty = name in env, bool(env.get(name))
        if op == ":-":
            return env[name] if nonempty else arg
        if op == "-":
            return env[name] if set_ else arg
        if op in (":?", "?"):
            if (op == ":?" and not nonempty) or (op == "?" and not set_):
                raise KeyError(f"required variable {name} is missing: {arg}")
            return env[name]
        if op == ":+":
            return arg if nonempty else ""
        if op == "+":
            return arg if set_ else ""
        return env.get(name, "")

    return _VAR.sub(repl, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def all_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for v in node for s in all_strings(v)]
    if isinstance(node, dict):
        return [s for v in node.values() for s in all_strings(v)]
    return []


# --------------------------------------------------------------------------------------------------
# Helpers on (interpolated) service definitions
# --------------------------------------------------------------------------------------------------


def services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return doc.get("services") or {}


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_str(svc: dict[str, Any]) -> str:
    cmd = svc.get("command")
    return " ".join(cmd) if isinstance(cmd, list) else (cmd or "")


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return dict.fromkeys(dep, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dep.items()}


def container_ports(svc: dict[str, Any]) -> dict[int, str | None]:
    """container port -> published host port (None if not published), short and long syntax."""
    out: dict[int, str | None] = {}
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            out[int(port["target"])] = str(port["published"]) if port.get("published") else None
            continue
        parts = str(port).split("/", 1)[0].split(":")
        out[int(parts[-1])] = parts[-2] if len(parts) >= 2 else None
    return out


def volume_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """container path -> source (host path or named volume), short and long syntax."""
    out = {}
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            out[vol["target"]] = vol.get("source", "")
            continue
        parts = str(vol).split(":")
        if len(parts) == 1:
            out[parts[0]] = ""
        else:
            out[parts[1]] = parts[0]
    return out


def is_bind_source(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def uses_common_block(doc: dict[str, Any], svc: dict[str, Any]) -> bool:
    common = doc.get("x-airflow-common") or {}
    return (
        bool(common) and svc.get("build") == common.get("build") and svc.get("image") == common.get("image")
    )


def resolved(env: Mapping[str, str] | None = None, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    return interpolate(load_raw() if raw is None else raw, {**DEPLOY_ENV, **(env or {})})


# --------------------------------------------------------------------------------------------------
# Checks: each returns the list of problems found (empty = fine)
# --------------------------------------------------------------------------------------------------


def check_required_services(doc: dict[str, Any]) -> Problems:
    missing = REQUIRED_SERVICES - set(services(doc))
    return [f"missing service {name}" for name in sorted(missing)]


def check_airflow_common(doc: dict[str, Any]) -> Problems:
    problems = []
    common = doc.get("x-airflow-common")
    if not isinstance(common, dict):
        return ["no x-airflow-common block"]
    build = common.get("build") or {}
    if build.get("context") != "." or build.get("dockerfile", "Dockerfile") != "Dockerfile":
        problems.append(f"x-airflow-common must build ./Dockerfile, has build={build!r}")
    for name in sorted(AIRFLOW_SERVICES & set(services(doc))):
        if not uses_common_block(doc, services(doc)[name]):
            problems.append(f"{name} does not use the x-airflow-common block")
    for name, svc in sorted(services(doc).items()):
        if not uses_common_block(doc, svc):
            continue
        env = env_of(svc)
        if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
            problems.append(f"{name}: AIRFLOW__CORE__EXECUTOR={env.get('AIRFLOW__CORE__EXECUTOR')!r}")
        if env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() != "false":
            problems.append(f"{name}: AIRFLOW__CORE__LOAD_EXAMPLES must be false")
        for key in (
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CELERY__BROKER_URL",
            "AIRFLOW__CELERY__RESULT_BACKEND",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW_CONN_CDP_OPENSEARCH",
        ):
            if env.get(key) != env_of(common).get(key):
                problems.append(f"{name}: {key} differs from (or is missing from) x-airflow-common")
    return problems


def check_commands(doc: dict[str, Any]) -> Problems:
    problems = []
    for name, expected in AIRFLOW_COMMANDS.items():
        svc = services(doc).get(name)
        if svc is not None and command_str(svc) != expected:
            problems.append(f"{name}: command {command_str(svc)!r}, expected {expected!r}")
    return problems


def check_connections(doc: dict[str, Any]) -> Problems:
    """Metadata DB, broker, result backend, execution API and OpenSearch point at defined services."""
    problems = []
    svcs = services(doc)
    env = env_of(doc.get("x-airflow-common") or {})

    db = urlsplit(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""))
    if not db.scheme.startswith("postgresql") or db.hostname != "postgres" or "postgres" not in svcs:
        problems.append(f"SQL_ALCHEMY_CONN must use the postgres service: {db.scheme}://{db.hostname}")
    backend = urlsplit(env.get("AIRFLOW__CELERY__RESULT_BACKEND", ""))
    if not backend.scheme.startswith("db+postgresql") or backend.hostname != "postgres":
        problems.append(
            f"RESULT_BACKEND must be db+postgresql on postgres: {backend.scheme}://{backend.hostname}"
        )
    broker = urlsplit(env.get("AIRFLOW__CELERY__BROKER_URL", ""))
    if broker.scheme != "redis" or broker.hostname != "redis" or "redis" not in svcs:
        problems.append(f"BROKER_URL must use the redis service: {broker.scheme}://{broker.hostname}")

    api = urlsplit(env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", ""))
    api_svc = svcs.get(api.hostname or "")
    if api_svc is None or command_str(api_svc) != "api-server":
        problems.append(f"EXECUTION_API_SERVER_URL host {api.hostname!r} is not the api-server service")
    elif api.port not in container_ports(api_svc) or api.path.rstrip("/") != "/execution":
        problems.append(
            f"EXECUTION_API_SERVER_URL must be http://<api-server>:<its port>/execution/: {api.geturl()}"
        )

    raw_conn = env.get("AIRFLOW_CONN_CDP_OPENSEARCH")
    if raw_conn is None:
        return [*problems, "AIRFLOW_CONN_CDP_OPENSEARCH is not set in x-airflow-common"]
    try:
        conn = json.loads(raw_conn)
    except json.JSONDecodeError as exc:
        return [*problems, f"AIRFLOW_CONN_CDP_OPENSEARCH is not JSON: {exc}"]
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    os_svc = svcs.get(conn.get("host", ""))
    if conn.get("conn_type") != "opensearch":
        problems.append(f"cdp_opensearch conn_type {conn.get('conn_type')!r}")
    if os_svc is None or os_svc.get("image") != OPENSEARCH_IMAGE:
        problems.append(f"cdp_opensearch host {conn.get('host')!r} is not the OpenSearch service")
    if conn.get("port") != 9200:
        problems.append(f"cdp_opensearch port {conn.get('port')!r} (expected the integer 9200)")
    if extra.get("use_ssl") is not False:
        problems.append("cdp_opensearch extra.use_ssl must be the boolean false (security plugin disabled)")
    return problems


def check_depends_on(doc: dict[str, Any]) -> Problems:
    problems = []
    svcs = services(doc)
    for name, svc in sorted(svcs.items()):
        for dep, condition in depends_on(svc).items():
            if dep not in svcs:
                problems.append(f"{name} depends on undefined service {dep!r}")
                continue
            if dep == name:
                problems.append(f"{name} depends on itself")
            if condition not in VALID_CONDITIONS:
                problems.append(f"{name} -> {dep}: invalid condition {condition!r}")
            if condition == "service_healthy" and "healthcheck" not in svcs[dep]:
                problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if condition == "service_completed_successfully" and svcs[dep].get("restart") not in (None, "no"):
                problems.append(
                    f"{name} waits for one-shot {dep} to complete, but {dep} has a restart policy"
                )
    # No cycles (Compose refuses them): Kahn's algorithm over defined services.
    graph = {n: {d for d in depends_on(s) if d in svcs} for n, s in svcs.items()}
    while graph:
        ready = [n for n, deps in graph.items() if not deps]
        if not ready:
            return [*problems, f"depends_on cycle among {sorted(graph)}"]
        for n in ready:
            del graph[n]
        for deps in graph.values():
            deps.difference_update(ready)
    return problems


def check_startup_order(doc: dict[str, Any]) -> Problems:
    """Airflow services wait for a healthy DB and broker and a completed airflow-init, like the reference."""
    problems = []
    svcs = services(doc)
    for name in sorted(set(AIRFLOW_COMMANDS) & set(svcs)):
        deps = depends_on(svcs[name])
        for dep, cond in (
            ("postgres", "service_healthy"),
            ("redis", "service_healthy"),
            ("airflow-init", "service_completed_successfully"),
        ):
            if deps.get(dep) != cond:
                problems.append(f"{name} must depend on {dep} with condition {cond}, has {deps.get(dep)!r}")
    worker = depends_on(svcs.get("airflow-worker", {}))
    for dep in ("airflow-apiserver", "opensearch"):
        if worker.get(dep) != "service_healthy":
            problems.append(f"airflow-worker must wait for a healthy {dep}")
    init = depends_on(svcs.get("airflow-init", {}))
    for dep in ("postgres", "redis"):
        if init.get(dep) != "service_healthy":
            problems.append(f"airflow-init must wait for a healthy {dep}")
    return problems


_DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")


def check_healthchecks(doc: dict[str, Any]) -> Problems:
    problems = []
    svcs = services(doc)
    for name in sorted(MUST_BE_HEALTHCHECKED & set(svcs)):
        hc = svcs[name].get("healthcheck")
        if not isinstance(hc, dict) or hc.get("disable"):
            problems.append(f"{name} has no healthcheck")
            continue
        test = hc.get("test")
        if isinstance(test, list):
            if not test or test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2 or not all(test[1:]):
                problems.append(f"{name}: healthcheck test must be [CMD|CMD-SHELL, ...]: {test!r}")
        elif not (isinstance(test, str) and test.strip()):
            problems.append(f"{name}: empty healthcheck test")
        for key in ("interval", "timeout", "start_period"):
            if key in hc and not _DURATION.match(str(hc[key])):
                problems.append(f"{name}: healthcheck {key}={hc[key]!r} is not a duration")
    api = svcs.get("airflow-apiserver", {}).get("healthcheck", {})
    if "localhost:8080/" not in " ".join(map(str, api.get("test") or [])):
        problems.append("airflow-apiserver healthcheck must probe its own port 8080")
    os_hc = svcs.get("opensearch", {}).get("healthcheck", {})
    if "9200" not in " ".join(map(str, os_hc.get("test") or [])):
        problems.append("opensearch healthcheck must probe port 9200")
    return problems


def check_ports_and_scaling(doc: dict[str, Any]) -> Problems:
    problems = []
    svcs = services(doc)
    api_ports = container_ports(svcs.get("airflow-apiserver", {}))
    if api_ports.get(8080) != "8080":
        problems.append(f"airflow-apiserver must publish 8080:8080, has {api_ports}")
    worker = svcs.get("airflow-worker", {})
    if "container_name" in worker or any(h is not None for h in container_ports(worker).values()):
        problems.append("airflow-worker must be scalable: no container_name and no published host ports")
    for name in ("postgres", "redis"):
        if any(h is not None for h in container_ports(svcs.get(name, {})).values()):
            problems.append(f"{name} must not be published on the host")
    for port in svcs.get("opensearch", {}).get("ports") or []:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        if host_ip != "127.0.0.1":
            problems.append(f"opensearch (no security plugin) must be published on 127.0.0.1 only: {port!r}")
    return problems


def check_opensearch(doc: dict[str, Any]) -> Problems:
    svc = services(doc).get("opensearch", {})
    env = env_of(svc)
    problems = []
    if svc.get("image") != OPENSEARCH_IMAGE:
        problems.append(f"opensearch image {svc.get('image')!r}, expected {OPENSEARCH_IMAGE}")
    for key, value in (
        ("DISABLE_SECURITY_PLUGIN", "true"),
        ("DISABLE_INSTALL_DEMO_CONFIG", "true"),
        ("discovery.type", "single-node"),
    ):
        if env.get(key, "").lower() != value:
            problems.append(f"opensearch {key}={env.get(key)!r}, expected {value!r}")
    for name, image in (("postgres", "postgres:16"), ("redis", "redis:7.2")):
        if not str(services(doc).get(name, {}).get("image", "")).startswith(image):
            problems.append(f"{name} image must be {image}*")
    return problems


def check_volumes(doc: dict[str, Any], root: Path = ROOT) -> Problems:
    problems = []
    svcs = services(doc)
    declared = set(doc.get("volumes") or {})
    for name, svc in sorted(svcs.items()):
        for source in volume_mounts(svc).values():
            if source and not is_bind_source(source) and source not in declared:
                problems.append(f"{name}: named volume {source!r} is not declared under top-level volumes")
    common_mounts = volume_mounts(doc.get("x-airflow-common") or {})
    for target in sorted(set(REPO_MOUNTS) | RUNTIME_MOUNTS):
        if target not in common_mounts:
            problems.append(f"x-airflow-common does not mount anything on {target}")
    for target, folder in sorted(REPO_MOUNTS.items()):
        source = common_mounts.get(target)
        if source is None:
            continue
        host = (root / source).resolve()
        if host != (root / folder).resolve():
            problems.append(f"{target} must be bind-mounted from ./{folder}, is {source!r}")
        elif not host.is_dir():
            problems.append(f"bind-mount source {source!r} for {target} does not exist in the repo")
    for name in sorted(AIRFLOW_SERVICES & set(svcs)):
        if volume_mounts(svcs[name]) != common_mounts:
            problems.append(f"{name} does not use the common volumes")
    return problems


def check_init(doc: dict[str, Any]) -> Problems:
    init = services(doc).get("airflow-init", {})
    env, cmd = env_of(init), command_str(init)
    problems = []
    if env.get("_AIRFLOW_DB_MIGRATE", "").lower() != "true" and "airflow db migrate" not in cmd:
        problems.append("airflow-init neither sets _AIRFLOW_DB_MIGRATE=true nor runs `airflow db migrate`")
    if "mkdir" not in cmd or not all(d in cmd for d in ("logs", "config", "landing")):
        problems.append("airflow-init must create the logs, config and landing folders")
    if init.get("restart") not in (None, "no"):
        problems.append("airflow-init is one-shot: it must not have a restart policy")
    return problems


_TOKEN = re.compile(r"^__([A-Za-z_][A-Za-z0-9_]*)__$")
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|PRIVATE_KEY", re.I)
_CONN_KEY = re.compile(r"^AIRFLOW_CONN_|SQL_ALCHEMY_CONN$|RESULT_BACKEND$|BROKER_URL$")


def check_secrets(raw: dict[str, Any]) -> Problems:
    """Secrets are placeholders, never literals: the Fernet key and JWT secret are required
    (${VAR:?message}, no known default), every other variable has a default."""
    problems = []
    required_seen = set()
    for value in all_strings(raw):
        for name, op, arg in var_refs(value):
            if name in REQUIRED_SECRETS:
                required_seen.add(name)
                if op != ":?" or not (arg or "").strip():
                    problems.append(f"${{{name}}} must be required with a message (${{{name}:?...}}), "
                                    "not defaulted: a known or empty key is no secret")
            elif op not in (":-", "-"):
                problems.append(f"${{{name}}} has no default: `docker compose up` would need a .env")
    for name in REQUIRED_SECRETS:
        if name not in required_seen:
            problems.append(f"{name} is not set from the environment")
    # Substitute each variable with a recognisable token: a credential that is not exactly one
    # token came from a literal in the file.
    names = {n for value in all_strings(raw) for n, _, _ in var_refs(value)}
    doc = interpolate(raw, {n: f"__{n}__" for n in names})
    blocks = {"x-airflow-common": doc.get("x-airflow-common") or {}, **services(doc)}
    for where, svc in blocks.items():
        for key, value in env_of(svc).items():
            if _SECRET_KEY.search(key) and value and not _TOKEN.match(value):
                problems.append(f"{where}: {key} is a literal, not a ${{VAR:-default}} placeholder")
            if not _CONN_KEY.search(key):
                continue
            if value.lstrip().startswith("{"):
                conn = json.loads(value)
                password = conn.get("password")
                extra = conn.get("extra") or {}
                extra = json.loads(extra) if isinstance(extra, str) else extra
                secrets = [password] + [v for k, v in extra.items() if _SECRET_KEY.search(k)]
            else:
                secrets = [urlsplit(value).password]
            for secret in secrets:
                if secret and not _TOKEN.match(str(secret)):
                    problems.append(f"{where}: {key} holds a literal password {secret!r}")
    return problems


def check_db_credentials_consistent(raw: dict[str, Any]) -> Problems:
    """With or without overrides, Airflow logs in to postgres with the credentials postgres was given."""
    problems = []
    for env in ({}, {"POSTGRES_USER": "u1", "POSTGRES_PASSWORD": "pw1", "POSTGRES_DB": "d1"}):
        doc = interpolate(raw, {**DEPLOY_ENV, **env})
        pg = env_of(services(doc).get("postgres", {}))
        want = (pg.get("POSTGRES_USER"), pg.get("POSTGRES_PASSWORD"), pg.get("POSTGRES_DB"))
        if env and want != ("u1", "pw1", "d1"):
            problems.append(f"postgres service ignores POSTGRES_* overrides: {want}")
        common = env_of(doc.get("x-airflow-common") or {})
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
            url = urlsplit(common.get(key, ""))
            got = (url.username, url.password, url.path.lstrip("/"))
            if got != want:
                problems.append(f"{key} logs in as {got}, postgres is set up with {want} (env {env})")
    return problems


def check_schema(doc: dict[str, Any]) -> Problems:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def check_dockerfile(doc: dict[str, Any], root: Path = ROOT) -> Problems:
    build = (doc.get("x-airflow-common") or {}).get("build") or {}
    context = root / build.get("context", ".")
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    if not dockerfile.is_file():
        return [f"{dockerfile} (the build's dockerfile) does not exist"]
    text = dockerfile.read_text()
    problems = []
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M | re.I)
    if froms != ["apache/airflow:3.3.2-python3.11"]:
        problems.append(f"Dockerfile must build FROM apache/airflow:3.3.2-python3.11, has {froms}")
    pin = re.search(r"^apache-airflow==(\S+)", (root / "requirements.txt").read_text(), re.M)
    if pin and froms and f":{pin.group(1)}-" not in froms[0]:
        problems.append(
            f"base image {froms[0]} does not match requirements.txt apache-airflow=={pin.group(1)}"
        )
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\S+\s*$", text, re.M | re.I):
        if not (context / src).exists():
            problems.append(f"Dockerfile copies {src}, which is not in the build context")
    if not re.search(r"pip install[^\n]*-r\s+\S*requirements\.txt", text):
        problems.append("Dockerfile does not pip install -r requirements.txt")
    if not re.search(r"pip install[^\n]*--no-deps[^\n]*\s\S*$", text, re.M):
        problems.append("Dockerfile does not pip install --no-deps the project")
    return problems


# --------------------------------------------------------------------------------------------------
# Tests on the real file
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_raw()


@pytest.fixture(scope="module")
def doc(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as `docker compose up` would see it with a .env holding only the required secrets."""
    return interpolate(raw, DEPLOY_ENV)


DOC_CHECKS: dict[str, Callable[[dict[str, Any]], Problems]] = {
    "required_services": check_required_services,
    "airflow_common": check_airflow_common,
    "commands": check_commands,
    "connections": check_connections,
    "depends_on": check_depends_on,
    "startup_order": check_startup_order,
    "healthchecks": check_healthchecks,
    "ports_and_scaling": check_ports_and_scaling,
    "opensearch": check_opensearch,
    "volumes": check_volumes,
    "init": check_init,
    "schema": check_schema,
    "dockerfile": check_dockerfile,
}
RAW_CHECKS: dict[str, Callable[[dict[str, Any]], Problems]] = {
    "secrets": check_secrets,
    "db_credentials": check_db_credentials_consistent,
}


@pytest.mark.parametrize("check", sorted(DOC_CHECKS))
def test_compose_file(doc: dict[str, Any], check: str) -> None:
    assert DOC_CHECKS[check](doc) == []


@pytest.mark.parametrize("check", sorted(RAW_CHECKS))
def test_compose_file_raw(raw: dict[str, Any], check: str) -> None:
    assert RAW_CHECKS[check](raw) == []


def test_anchor_merge_resolved(raw: dict[str, Any]) -> None:
    """safe_load really merged the common block (no leftover `<<` keys anywhere)."""
    assert "<<" not in json.dumps(raw)
    worker_env = env_of(services(raw)["airflow-worker"])
    assert worker_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker_env["DUMB_INIT_SETSID"] == "0"


def test_vendored_schema_is_unmodified() -> None:
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_overrides_reach_the_services() -> None:
    doc = resolved({"AIRFLOW_UID": "1234", "OPENSEARCH_PORT": "19200", "AIRFLOW_PROJ_DIR": "/srv/cdp"})
    assert services(doc)["airflow-scheduler"]["user"] == "1234:0"
    assert container_ports(services(doc)["opensearch"]) == {9200: "19200"}
    assert volume_mounts(services(doc)["airflow-worker"])["/opt/airflow/dags"] == "/srv/cdp/dags"


def test_docker_compose_config() -> None:
    """`docker-compose config -q` (Compose's own parser and validator; no Docker engine needed)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    argv = [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config", "-q"]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**env, **DEPLOY_ENV}, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr or proc.stdout
    # without the secrets Compose refuses, and says what to do
    for missing in REQUIRED_SECRETS:
        partial = {k: v for k, v in DEPLOY_ENV.items() if k != missing}
        proc = subprocess.run(argv, capture_output=True, text=True, env={**env, **partial}, timeout=120, check=False)
        assert proc.returncode != 0
        assert f"${{{missing}:?is required: generate one" in proc.stderr


def test_required_secrets_have_no_default() -> None:
    """`docker compose up` with no .env stops on the Fernet key / JWT secret instead of using a known one."""
    for missing in REQUIRED_SECRETS:
        env = {k: v for k, v in DEPLOY_ENV.items() if k != missing}
        with pytest.raises(KeyError, match=f"required variable {missing} is missing: is required: generate one"):
            interpolate(load_raw(), env)
    common = env_of(resolved()["x-airflow-common"])
    assert {k: common[k] for k in REQUIRED_SECRETS} == DEPLOY_ENV


def test_readme_documents_generating_the_secrets() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in REQUIRED_SECRETS:
        assert name in readme
    assert "Fernet.generate_key()" in readme and "secrets.token_urlsafe" in readme


# --------------------------------------------------------------------------------------------------
# The checks can fail: each breaks a copy of the file and expects the check to notice
# --------------------------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutation setting (or, with value ..., deleting) doc[path...]; path parts separated by '|'."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("|")
        node = doc
        for part in parents:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return mutate


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no worker", _set("services|airflow-worker", ...), "required_services"),
    (
        "worker on LocalExecutor",
        _set("services|airflow-worker|environment|AIRFLOW__CORE__EXECUTOR", "LocalExecutor"),
        "airflow_common",
    ),
    (
        "examples loaded",
        _set("services|airflow-triggerer|environment|AIRFLOW__CORE__LOAD_EXAMPLES", "true"),
        "airflow_common",
    ),
    ("worker runs flower", _set("services|airflow-worker|command", "celery flower"), "commands"),
    ("api server not serving", _set("services|airflow-apiserver|command", "webserver"), "commands"),
    (
        "broker host typo",
        _set("x-airflow-common|environment|AIRFLOW__CELERY__BROKER_URL", "redis://:@rediz:6379/0"),
        "connections",
    ),
    (
        "use_ssl not a JSON boolean",
        _set(
            "x-airflow-common|environment|AIRFLOW_CONN_CDP_OPENSEARCH",
            '{"conn_type": "opensearch", "host": "opensearch", "port": 9200, "extra": {"use_ssl": "false"}}',
        ),
        "connections",
    ),
    (
        "opensearch conn to wrong host",
        _set(
            "x-airflow-common|environment|AIRFLOW_CONN_CDP_OPENSEARCH",
            '{"conn_type": "opensearch", "host": "localhost", "port": 9200, "extra": {"use_ssl": false}}',
        ),
        "connections",
    ),
    (
        "execution API on wrong port",
        _set(
            "x-airflow-common|environment|AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            "http://airflow-apiserver:8081/execution/",
        ),
        "connections",
    ),
    (
        "depends on undefined",
        _set("services|airflow-scheduler|depends_on|rediss", {"condition": "service_healthy"}),
        "depends_on",
    ),
    (
        "invalid condition",
        _set("services|airflow-scheduler|depends_on|airflow-init|condition", "service_done"),
        "depends_on",
    ),
    ("healthy wait on unchecked service", _set("services|redis|healthcheck", ...), "depends_on"),
    (
        "cycle",
        _set("services|postgres|depends_on", {"airflow-worker": {"condition": "service_started"}}),
        "depends_on",
    ),
    (
        "worker starts before init",
        _set("services|airflow-worker|depends_on|airflow-init", ...),
        "startup_order",
    ),
    ("no opensearch healthcheck", _set("services|opensearch|healthcheck", ...), "healthchecks"),
    ("no api-server healthcheck", _set("services|airflow-apiserver|healthcheck", ...), "healthchecks"),
    ("bad healthcheck test", _set("services|postgres|healthcheck|test", ["pg_isready"]), "healthchecks"),
    ("api server port moved", _set("services|airflow-apiserver|ports", ["8081:8080"]), "ports_and_scaling"),
    ("worker pinned", _set("services|airflow-worker|container_name", "worker"), "ports_and_scaling"),
    ("opensearch on all interfaces", _set("services|opensearch|ports", ["9200:9200"]), "ports_and_scaling"),
    (
        "security plugin on",
        _set("services|opensearch|environment|DISABLE_SECURITY_PLUGIN", "false"),
        "opensearch",
    ),
    (
        "dags from missing folder",
        _set("x-airflow-common|volumes", ["./no-such-dir:/opt/airflow/dags"]),
        "volumes",
    ),
    ("undeclared volume", _set("services|postgres|volumes", ["pgdata:/var/lib/postgresql/data"]), "volumes"),
    ("init without migrate", _set("services|airflow-init|environment|_AIRFLOW_DB_MIGRATE", "false"), "init"),
    ("unknown service key", _set("services|redis|restrat", "always"), "schema"),
    ("wrong type", _set("services|redis|healthcheck|retries", "many"), "schema"),
    (
        "build from elsewhere",
        _set("x-airflow-common|build", {"context": ".", "dockerfile": "Nope.Dockerfile"}),
        "dockerfile",
    ),
]

RAW_MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "literal DB password",
        _set(
            "x-airflow-common|environment|AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "postgresql+psycopg2://airflow:hunter2@postgres/airflow",
        ),
        "secrets",
    ),
    (
        "literal password in JSON conn",
        _set(
            "x-airflow-common|environment|AIRFLOW_CONN_CDP_OPENSEARCH",
            '{"conn_type": "opensearch", "host": "opensearch", "port": 9200, "password": "hunter2"}',
        ),
        "secrets",
    ),
    (
        "literal postgres password",
        _set("services|postgres|environment|POSTGRES_PASSWORD", "hunter2"),
        "secrets",
    ),
    (
        "variable without default",
        _set("x-airflow-common|environment|AIRFLOW__API_AUTH__JWT_SECRET", "${JWT_SECRET}"),
        "secrets",
    ),
    (
        "known JWT secret as default",
        _set("x-airflow-common|environment|AIRFLOW__API_AUTH__JWT_SECRET",
             "${AIRFLOW__API_AUTH__JWT_SECRET:-cdp-ingest-dev-jwt-secret}"),
        "secrets",
    ),
    (
        "empty Fernet key as default",
        _set("x-airflow-common|environment|AIRFLOW__CORE__FERNET_KEY", "${AIRFLOW__CORE__FERNET_KEY:-}"),
        "secrets",
    ),
    (
        "Fernet key literal",
        _set("x-airflow-common|environment|AIRFLOW__CORE__FERNET_KEY", "Hu8Cc4CrlkpxuwJHZoc9iYXxEEFvZgo-ovfSp2aT0Ck="),
        "secrets",
    ),
    (
        "mismatched default password",
        _set("services|postgres|environment|POSTGRES_PASSWORD", "${POSTGRES_PASSWORD:-other}"),
        "db_credentials",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "check"), [(m, c) for _, m, c in MUTATIONS], ids=[n for n, _, _ in MUTATIONS]
)
def test_check_catches_broken_file(mutate: Callable[[dict[str, Any]], None], check: str) -> None:
    broken = load_raw()
    mutate(broken)
    assert DOC_CHECKS[check](interpolate(broken, DEPLOY_ENV)), f"check {check!r} did not notice the breakage"


@pytest.mark.parametrize(
    ("mutate", "check"), [(m, c) for _, m, c in RAW_MUTATIONS], ids=[n for n, _, _ in RAW_MUTATIONS]
)
def test_check_catches_broken_raw_file(mutate: Callable[[dict[str, Any]], None], check: str) -> None:
    broken = load_raw()
    mutate(broken)
    assert RAW_CHECKS[check](broken), f"check {check!r} did not notice the breakage"


def test_interpolation_semantics() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate_str("${SET:-d}|${EMPTY:-d}|${UNSET:-d}|${EMPTY-d}|${UNSET-d}", env) == "v|d|d||d"
    assert interpolate_str("$$HOME|$${X}|$SET|${OPTS:--Xms1g -Xmx1g}", env) == "$HOME|${X}|v|-Xms1g -Xmx1g"
    assert interpolate_str("${SET:+alt}|${UNSET:+alt}", env) == "alt|"
    with pytest.raises(KeyError):
        interpolate_str("${UNSET:?needed}", env)
