"""Small helpers shared by the source and the datasets: option parsing and a bounded reachability probe."""

from __future__ import annotations

import socket
import threading
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def bool_option(value: Any, name: str) -> bool:
    """``value`` as a bool; strings from the command line (``"false"``, ``"0"``, ``"yes"``) are accepted."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def positive_float_option(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
    return number


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included).

    The lookup and connection run in a daemon thread so that a stalled resolver cannot hold the
    caller longer than ``timeout`` (``socket.create_connection``'s own timeout does not cover DNS).
    """
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, name=f"flatplug-probe-{host}", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])
