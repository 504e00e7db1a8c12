"""A private ``redis-server`` for tests and benchmarks: a free loopback port, its files in a
directory of its own, started and stopped by the caller (never a system service).

::

    with RedisServer(tmp_path, password="s3cret") as server:
        s = RedisScheduler(server.url(group="t1"))
        ...
        server.restart()            # SIGTERM (AOF flushed), then the same port and files again

The configuration (password included) is written to a file in ``directory``, not passed on the
command line, so it never shows in ``ps``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

INSTALL = "apt-get install redis-server"


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1 with AOF on (``appendfsync`` as given).

    ``tls``: ``{"cert": path, "key": path, "ca": path}`` serves TLS only (``rediss://``);
    ``acl``: lines of an ACL file (``user NAME on >password ~dcp:NAME:* +@all``).
    """

    def __init__(self, directory: str | os.PathLike, *, password: str | None = None, appendfsync: str = "everysec",
                 tls: dict | None = None, acl: list[str] | None = None, extra: dict[str, str] | None = None) -> None:
        if redis_server_path() is None:
            raise FileNotFoundError(f"redis-server is not installed ({INSTALL})")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        lines = {
            "bind": "127.0.0.1", "protected-mode": "yes", "dir": str(self.directory), "appendonly": "yes",
            "appendfsync": appendfsync, "save": '""', "daemonize": "no", "logfile": str(self.directory / "redis.log"),
            "databases": "16",
        }
        if tls:
            lines.update({"port": "0", "tls-port": str(self.port), "tls-cert-file": tls["cert"],
                          "tls-key-file": tls["key"], "tls-ca-cert-file": tls["ca"], "tls-auth-clients": "no"})
        else:
            lines["port"] = str(self.port)
        if password is not None:
            lines["requirepass"] = password
        if acl is not None:
            (self.directory / "users.acl").write_text("\n".join(acl) + "\n")
            lines["aclfile"] = str(self.directory / "users.acl")
        lines.update(extra or {})
        self.config = self.directory / "redis.conf"
        self.config.write_text("".join(f"{k} {v}\n" for k, v in lines.items()))
        self.config.chmod(0o600)

    def url(self, group: str | None = None, *, user: str | None = None, password: str | None = None,
            **options: Any) -> str:
        """The scheduler URL of this server (``password`` defaults to the server's)."""
        secret = self.password if password is None else password
        auth = ""
        if user or secret is not None:
            auth = f"{quote(user or '', safe='')}{':' + quote(secret, safe='') if secret is not None else ''}@"
        query = dict(options)
        if group:
            query["group"] = group
        if self.tls and "ssl_ca_certs" not in query:
            query["ssl_ca_certs"] = self.tls["ca"]
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0" + ("?" + "&".join(f"{k}={v}" for k, v in query.items())
                                                              if query else "")

    def start(self, timeout: float = 15.0) -> "RedisServer":
        log = open(self.directory / "stdout.log", "ab")
        self.proc = subprocess.Popen([redis_server_path() or "redis-server", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s: {self.log_tail()}")

    def _answers(self) -> bool:
        """The server accepts connections and has loaded its data (PING is refused while loading)."""
        import redis

        kwargs: dict[str, Any] = {"ssl": True, "ssl_ca_certs": self.tls["ca"]} if self.tls else {}
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1,
                             socket_connect_timeout=1, **kwargs)
        try:
            return bool(client.ping())
        except redis.exceptions.AuthenticationError:
            return True  # up, and an ACL file decides who may do what
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop it (``SIGTERM``: the AOF is flushed first; ``SIGKILL``: as a crash would)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, sig: int = signal.SIGTERM, down: float = 0.0) -> None:
        """Stop, stay down ``down`` seconds, start again on the same port with the same files."""
        self.stop(sig)
        time.sleep(down)
        self.start()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.directory / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
