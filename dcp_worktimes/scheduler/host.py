"""Which processes this one can see: the key stores record with a worker's or deployer's pid.

A store decides that a worker (or a deployer feeding a stream) is dead, and hands its slices on at
once, when its pid does not exist *here*. That holds only for a process of the same pid namespace:
two containers on one host, a worker under ``unshare -p`` or bubblewrap, or two hosts of one name
share a host name, not pids. Processes under another key are judged by the clock (lease expiry).

    >>> HOST_KEY.startswith(socket.gethostname())
    True
"""

from __future__ import annotations

import os
import socket


def _host_key() -> str:
    """Host name, boot id and pid namespace (where /proc tells them)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)


#: This process's key (see the module docstring).
HOST_KEY = _host_key()
