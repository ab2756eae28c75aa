"""No network in tests: every way out of the machine (TCP/UDP connect, connect_ex, sendto, DNS look-ups) raises.

Used by the autouse `no_network` fixture in conftest.py and by tests/reliability/killer.py (roli in a subprocess).
Local IPC (AF_UNIX sockets, socketpair, pipes) stays allowed: DataLoader workers need it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

MESSAGE = "network access in tests is not allowed"
ATTEMPTS: list[str] = []  # what was tried, for tests that assert nothing was


def _refuse(what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        ATTEMPTS.append(f"{what}{args[1:] if what.startswith('socket.socket') else args}")
        raise OSError(f"{MESSAGE} ({what})")

    return refuse


def _unless_local(what: str, real: Callable[..., Any]) -> Callable[..., Any]:
    refuse = _refuse(what)

    def guarded(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX:
            return real(sock, *args, **kwargs)
        return refuse(sock, *args, **kwargs)

    return guarded


def targets() -> list[tuple[Any, str, Callable[..., Any]]]:
    """(object, attribute, replacement) for every blocked entry point."""
    out: list[tuple[Any, str, Callable[..., Any]]] = []
    for name in ("connect", "connect_ex", "sendto", "sendmsg"):
        out.append((socket.socket, name, _unless_local(f"socket.socket.{name}", getattr(socket.socket, name))))
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr",
                 "getnameinfo"):
        out.append((socket, name, _refuse(f"socket.{name}")))
    return out


def install(setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """Block the network; `setattr_` is e.g. pytest's monkeypatch.setattr (undone after the test)."""
    for obj, name, value in targets():
        setattr_(obj, name, value)
