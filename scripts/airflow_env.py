"""The embedded Airflow configuration shared by the demo, the UI command and the tests.

SQLite metadata DB + LocalExecutor + this repo's dags/ and plugins/, examples off, a small worker pool
for a 2-core machine. ``python scripts/airflow_env.py AIRFLOW_HOME`` prints shell exports.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Allocator settings the benchmarks run with (not set for the Airflow processes): glibc's per-thread arenas
# and Arrow's mimalloc pool kept the bursts of a batch or a bulk chunk as RSS — partition transform + load of
# five 25,000-row files in one process: peak 334 MB -> 270 MB, same CPU — but with them the 1 GB SFTP test's
# transform grew with the file once (390 MB at 150k rows, 457 MB at 2.8M; it passed in another run).
MEMORY_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"}


def jwt_secret(home: Path) -> str:
    """The secret all of this home's components sign their API tokens with, made once (64 bytes, 0600).
    Airflow's own generated one is 16 bytes, which PyJWT flags (HS512 wants 64) in a warning on every
    token the scheduler and API server make."""
    path = home / "jwt_secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)  # 64 characters
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return secret


def airflow_env(airflow_home: Path | str, landing: Path | str | None = None) -> dict[str, str]:
    home = Path(airflow_home).resolve()
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret(home),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "CDP_LANDING_DIR": str(Path(landing).resolve() if landing else home / "landing"),
        "CDP_STAGING_DIR": str(home / "staging"),
        "PYTHONPATH": str(ROOT / "plugins"),
    }


if __name__ == "__main__":
    for key, value in airflow_env(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None).items():
        sys.stdout.write(f"export {key}='{value}'\n")
