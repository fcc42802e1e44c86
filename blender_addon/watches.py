"""One watch per connection file (`EngineWatch`), shared by the panels and the operators. Plain Python
(no bpy): the caller says which connection files are still wanted."""

from __future__ import annotations

from typing import Iterable

from .engine_link import EngineWatch

WATCH_TIMEOUT_S = 5.0

_watches: dict[str, EngineWatch] = {}


def engine_watch(connection_file: str, wanted: Iterable[str] = (), restart: bool = False) -> EngineWatch:
    """The watch on `connection_file`'s engine, started on first use; watches of connection files neither
    this one nor in `wanted` are closed."""
    if restart and connection_file in _watches:
        _watches.pop(connection_file).close()
    if connection_file not in _watches:
        _watches[connection_file] = EngineWatch(connection_file, timeout_s=WATCH_TIMEOUT_S)
    keep = set(wanted) | {connection_file}
    for name in set(_watches) - keep:
        _watches.pop(name).close()
    return _watches[connection_file]


def close_all() -> None:
    for watch in _watches.values():
        watch.close()
    _watches.clear()
