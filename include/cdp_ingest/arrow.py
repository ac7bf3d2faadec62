"""pyarrow for the engine, without pandas.

pyarrow imports pandas the first time it builds an array or a scalar, only to ask whether the input
is a pandas object (``pa.array``, ``pa.scalar``, ``pc.if_else`` with a Python value, ...). The engine
never hands it one, and pandas costs every task process ~35 MB of RSS and ~0.2 s. pyarrow asks once
per process and remembers the answer, so this module lets that first probe find no pandas; an explicit
conversion (``Table.to_pandas()``) still imports pandas when something calls it. Engine modules import
``pa`` from here, so the probe is answered before their first array. If pandas is already imported,
nothing changes, and ``CDP_ARROW_PANDAS=1`` leaves pyarrow's own behaviour alone (for a process that
also hands pyarrow Python lists holding pandas values such as ``pd.NaT``, which then need pandas).
"""

from __future__ import annotations

import os
import sys

import pyarrow as pa

__all__ = ["pa"]


class _NoPandas:
    """A meta-path finder that makes ``import pandas`` raise ImportError while it is installed."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not used by cdp_ingest", name=name)


def _answer_pandas_probe() -> None:
    if "pandas" in sys.modules or os.environ.get("CDP_ARROW_PANDAS") == "1":
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)  # type: ignore[arg-type]
    try:
        pa.array([], pa.null())  # the Python side's probe (is this a pandas object?)
        pa.array([0])  # the C++ side's, when it infers a type from Python values
    finally:
        sys.meta_path.remove(finder)  # type: ignore[arg-type]


_answer_pandas_probe()
