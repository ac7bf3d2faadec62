"""Shape checks shared by the DAG families' config files (config/*.yaml), so that a mistake fails the DAG
file with a message naming the key, not a TypeError or AttributeError from deep inside the factory."""

from __future__ import annotations

from typing import Any


def mapping_of(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a mapping: None is an empty one; anything else that is not a mapping is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, not {value!r}")
    return value


def number_of(value: Any, where: str, *, whole: bool = False) -> Any:
    """A number from YAML (``whole``: an integer), or text that reads as one (``"0.2"``, as ``float()`` took
    it before); a bool, a list, a mapping or other text is refused."""
    kind = int if whole else float
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            pass
    elif not isinstance(value, bool) and isinstance(value, int if whole else int | float):
        return value
    raise ValueError(f"{where} must be {'a whole number' if whole else 'a number'}, not {value!r}")


def ratio_of(value: Any, where: str) -> float:
    ratio = float(number_of(value, where))
    if not 0 <= ratio <= 1:
        raise ValueError(f"{where} must be between 0 and 1, not {value!r}")
    return ratio


def sensor_of(value: Any, where: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A ``sensor: {mode, poke_interval, timeout}`` entry over ``defaults``, checked."""
    sensor = {**defaults, **mapping_of(value, f"{where}: sensor")}
    unknown = set(sensor) - {"mode", "poke_interval", "timeout"}
    if unknown:
        raise ValueError(f"{where}: unknown sensor keys {sorted(map(str, unknown))} (mode, poke_interval, timeout)")
    if sensor["mode"] not in ("poke", "reschedule"):
        raise ValueError(f"{where}: sensor mode must be poke or reschedule, not {sensor['mode']!r}")
    for key in ("poke_interval", "timeout"):
        value = number_of(sensor[key], f"{where}: sensor {key} (seconds)")
        if value <= 0:
            raise ValueError(f"{where}: sensor {key} (seconds) must be > 0, not {sensor[key]!r}")
        sensor[key] = value
    return sensor
