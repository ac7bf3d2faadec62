#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian machine of this kind:
# Debian packages (sshd, PostgreSQL, JDK 17, Maven, Chromium + chromedriver), uv, and the project venv (.venv) with the
# pinned requirements plus the engine package in editable mode. Safe to rerun: each step is
# skipped when already satisfied, so a warm machine pays only uv's quick "already installed" check.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_missing=()
[ -x /usr/sbin/sshd ] || apt_missing+=(openssh-server)
command -v sftp >/dev/null || apt_missing+=(openssh-client)
command -v ssh-keygen >/dev/null || apt_missing+=(openssh-client)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || apt_missing+=(postgresql)
command -v java >/dev/null || apt_missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || apt_missing+=(maven)
command -v docker-compose >/dev/null || apt_missing+=(docker-compose)  # static `config -q` check only
command -v chromium >/dev/null || apt_missing+=(chromium)  # tests/test_ui_browser.py: the console in a real browser
command -v chromedriver >/dev/null || apt_missing+=(chromium-driver)
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${apt_missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# OpenSearch and PostgreSQL refuse to run as root: the service harness runs them as this user.
if [ "$(id -u)" = 0 ] && ! id cdpsvc >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin cdpsvc
fi

if ! command -v uv >/dev/null || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    python3 -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi

if [ ! -x .venv/bin/python ]; then
    uv venv -q -p "${PYTHON:-python3.11}" .venv
fi
# --compile-bytecode: this machine sets PYTHONDONTWRITEBYTECODE=1, so without .pyc files every process
# (each Airflow task, CLI call and test subprocess) compiles Airflow from source: ~2.5 s more per start.
uv pip install -q -p .venv/bin/python --compile-bytecode -r requirements.txt -r requirements-dev.txt
uv pip install -q -p .venv/bin/python --no-deps -e .
echo "bootstrap: ready (.venv, $(.venv/bin/python --version))"
