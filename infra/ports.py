"""Loopback port checks: is a port taken, and which ports are free right now."""

from __future__ import annotations

import socket
from typing import Iterable


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (we cannot bind it).

    SO_REUSEADDR makes sockets left in TIME_WAIT by a server we just stopped count as free,
    which matches what the servers themselves do when they bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(n: int, host: str = "127.0.0.1", exclude: Iterable[int] = ()) -> list[int]:
    """`n` distinct ports that are free on `host` now and not in `exclude` (the OS picks them:
    bind to port 0). All sockets stay open until every port is picked, so none repeats."""
    skip = set(exclude)
    sockets: list[socket.socket] = []
    picked: list[int] = []
    try:
        while len(picked) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in skip:
                picked.append(port)
        return picked
    finally:
        for s in sockets:
            s.close()
