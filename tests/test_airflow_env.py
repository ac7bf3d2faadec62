"""The embedded Airflow configuration (scripts/airflow_env.py) that the demo, `make ui` and the tests share."""

from __future__ import annotations

import stat

from airflow_env import airflow_env

KEY = "AIRFLOW__API_AUTH__JWT_SECRET"


def test_each_airflow_home_gets_its_own_64_byte_jwt_secret_made_once(tmp_path):
    first, again, other = airflow_env(tmp_path / "a"), airflow_env(tmp_path / "a"), airflow_env(tmp_path / "b")
    secret = first[KEY]
    assert len(secret.encode()) >= 64  # HS512: PyJWT warns on every token below 64 bytes
    assert again[KEY] == secret  # every component of one home signs and checks with the same secret
    assert other[KEY] != secret
    assert stat.S_IMODE((tmp_path / "a" / "jwt_secret").stat().st_mode) == 0o600
