"""``ObjectStoragePath`` for one URL, importing only the provider that serves its scheme.

``ObjectStoragePath(url, conn_id=...)`` asks Airflow for the scheme's filesystem, and Airflow first
imports the filesystem module of *every* installed provider to learn which schemes exist. With both
the Amazon and the Google providers installed (this project reads s3:// and gs://), a task that only
reads S3 also imports google-cloud-storage, googleapiclient and grpc: ~40 MB of RSS and ~0.4–0.5 s per task
process (measured in the partition DAG: the sensor task, 313 → 355 MB).

``object_path`` attaches the filesystem of the one provider module that serves the URL's scheme (the
same module and ``get_fs`` Airflow would pick for it) under the store alias Airflow itself looks up
(``<scheme>-<conn_id>``), then builds the ``ObjectStoragePath`` as usual; every path operation is
Airflow's. Schemes not listed here (or a module that no longer declares the scheme) take Airflow's
own route.

``open_path`` opens such a path for a plain byte copy. ``ObjectStoragePath.open`` wraps the file so
that every ``read``/``write`` reports an asset to Airflow's hook-lineage collector, and the first
report builds the collector, which imports every provider's asset modules (the same ~40 MB) even when
no lineage reader is registered and the report is dropped. With no reader registered, ``open_path``
opens the file on the path's own (Airflow-authenticated) filesystem; with one, through the wrapper.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)

# scheme -> the provider module whose ``get_fs`` serves it (its ``schemes`` list is checked on import)
PROVIDER_FS = {
    "s3": "airflow.providers.amazon.aws.fs.s3",
    "s3a": "airflow.providers.amazon.aws.fs.s3",
    "s3n": "airflow.providers.amazon.aws.fs.s3",
    "gs": "airflow.providers.google.cloud.fs.gcs",
    "gcs": "airflow.providers.google.cloud.fs.gcs",
}


def object_path(url: str, conn_id: str | None = None) -> Any:
    """``ObjectStoragePath(url, conn_id=conn_id)`` (without ``conn_id``, or for file:// and local
    paths, ``ObjectStoragePath(url)``)."""
    from airflow.sdk import ObjectStoragePath

    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if not conn_id or scheme == "file":
        return ObjectStoragePath(url)
    _attach(scheme, conn_id)
    return ObjectStoragePath(url, conn_id=conn_id)


@functools.cache
def _attach(scheme: str, conn_id: str) -> bool:
    """Attach the scheme's provider filesystem for ``conn_id`` once per process; False → Airflow's route."""
    name = PROVIDER_FS.get(scheme)
    if name is None:
        return False
    try:
        module = importlib.import_module(name)
    except ImportError:
        log.debug("%s is not installed: Airflow resolves %s:// itself", name, scheme)
        return False
    if scheme not in getattr(module, "schemes", ()) or not callable(getattr(module, "get_fs", None)):
        return False
    from airflow.sdk.io import attach

    attach(scheme, conn_id, fs=module.get_fs(conn_id, {}))
    return True


def open_path(path: Any, mode: str = "rb") -> Any:
    """A file object for an ``object_path`` (see the module docstring); local ``Path``s open as usual."""
    if not hasattr(path, "fs") or not hasattr(path, "conn_id"):
        return open(path, mode)
    if _lineage_readers():
        return path.open(mode)
    return path.fs.open(path.path, mode)


class Readable:
    """An ``object_path`` handed to the engine's readers (``cdp_ingest.readers.open_source``, which opens
    path-like sources with ``.open("rb")``), opened through ``open_path`` instead of the lineage wrapper."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.protocol = getattr(path, "protocol", "file")

    def open(self, mode: str = "rb") -> Any:
        return open_path(self.path, mode)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Readable({self.path!r})"


def _lineage_readers() -> bool:
    from airflow.sdk import plugins_manager

    return bool(plugins_manager.get_hook_lineage_readers_plugins())
