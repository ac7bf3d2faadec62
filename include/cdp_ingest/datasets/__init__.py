"""Datasets (SPEC §4): named sources imported and kept in sync — declarations (``spec``), change detection and
fetching (``sources``), raw dataset indices with atomic alias swaps (``raw``), job/state documents (``state``)
and the sync steps (``sync``). The Airflow DAGs, REST API and CLI are thin layers over these modules."""
