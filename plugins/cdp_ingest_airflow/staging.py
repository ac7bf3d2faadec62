"""Where tasks hand staged files to each other: a local folder (default) or object storage.

``CDP_STAGING_DIR`` (default ``/tmp/cdp-staging``) is where a task writes and reads its working copies.
With ``CDP_STAGING_URL`` set (e.g. ``s3://cdp-staging/imports``; read through ``CDP_STAGING_CONN_ID``,
an Airflow connection, with ``ObjectStoragePath``), the transform task *publishes* its staged Parquet
file and its error CSV there and the XCom result carries their URLs; the load task *fetches* them into
its own ``CDP_STAGING_DIR`` first. So transform and load may run on different Celery workers and hosts
without a shared file system. Local paths pass through unchanged.

SFTP manifest imports hand over more: the parse task publishes the downloaded data file and the
manifest, the load task its merged error CSV (finalize sends it to the client); finalize then removes
everything under ``<CDP_STAGING_URL>/<import_id>/`` (``remove_all``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cdp_ingest_airflow.objectstore import object_path, open_path

log = logging.getLogger(__name__)
COPY_BLOCK = 8 << 20


def staging_url() -> str | None:
    return (os.environ.get("CDP_STAGING_URL") or "").rstrip("/") or None


def is_remote(location: str | None) -> bool:
    return bool(location) and "://" in str(location) and not str(location).startswith("file://")


def _path(url: str):
    return object_path(url, os.environ.get("CDP_STAGING_CONN_ID"))


def publish(local: str | Path | None, import_id: str) -> str | None:
    """Upload ``local`` to ``<CDP_STAGING_URL>/<import_id>/<name>`` and return that URL (then the local
    copy is removed); without a staging URL (or a file) return ``local`` as it is."""
    url = staging_url()
    if local is None or not url:
        return None if local is None else str(local)
    local = Path(local)
    location = f"{url}/{import_id}/{local.name}"  # without the connection id: CDP_STAGING_CONN_ID is read again
    with open(local, "rb") as src, open_path(_path(location), "wb") as out:
        shutil.copyfileobj(src, out, COPY_BLOCK)
    size = local.stat().st_size
    local.unlink()
    log.info("staged %s as %s (%s bytes)", local.name, location, size)
    return location


def location(import_id: str, name: str) -> str | None:
    """Where ``publish`` puts a file called ``name`` of ``import_id`` (None without a staging URL)."""
    url = staging_url()
    return f"{url}/{import_id}/{name}" if url else None


def listing(import_id: str) -> list[str]:
    """The URLs of every object published for ``import_id`` (none without a staging URL)."""
    url = staging_url()
    if not url:
        return []
    folder = _path(f"{url}/{import_id}/")
    invalidate = getattr(folder.fs, "invalidate_cache", None)
    if invalidate is not None:  # another process or host may have written since this one listed
        invalidate()
    try:
        names = sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return []
    return [f"{url}/{import_id}/{name}" for name in names if name]


def remove_all(import_id: str) -> int:
    """Remove every object published for ``import_id``; returns how many there were."""
    found = listing(import_id)
    for loc in found:
        remove(loc)
    if found:
        log.info("removed %s staged object(s) of import %s", len(found), import_id)
    return len(found)


def fetch(location: str | None, local_dir: str | Path) -> str | None:
    """A local path for ``location``: a remote staged file is downloaded into ``local_dir`` first."""
    if not location or not is_remote(location):
        return location
    src = _path(location)
    local = Path(local_dir) / src.name
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_suffix(local.suffix + ".partial")
    with open_path(src) as fh, open(tmp, "wb") as out:
        shutil.copyfileobj(fh, out, COPY_BLOCK)
    os.replace(tmp, local)
    return str(local)


def open_staged(location: str):
    """A binary file object for a staged file, local or remote (the validate step reads its footer)."""
    return open_path(_path(location)) if is_remote(location) else open(location, "rb")


def remove(location: str | None) -> None:
    if not location:
        return
    if is_remote(location):
        try:
            _path(location).unlink()
        except FileNotFoundError:
            pass
    else:
        Path(location).unlink(missing_ok=True)
