"""cdp-ingest import engine: readers, manifest, mapping, validation, documents, store, ledger.

This package never imports Airflow, so it runs and is tested without a metadata DB.
"""

__version__ = "0.1.0"
