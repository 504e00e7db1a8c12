"""A loopback TCP proxy whose link can be cut, to partition one client from a server in tests."""

from __future__ import annotations

import selectors
import socket
import threading


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target>``.

    ``cut()``: every open connection is dropped and new ones are closed at once (a lost link);
    ``blackhole()``: connections stay open but nothing crosses (a partition: reads time out);
    ``heal()``: new connections work again.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.state = "up"
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.state == "cut":
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if self.state == "up":
                        key.data.sendall(data)
                    # blackhole: the bytes are dropped, the peer waits
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.state = "cut"
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def blackhole(self) -> None:
        self.state = "blackhole"

    def heal(self) -> None:
        if self.state == "blackhole":
            self.cut()  # bytes were dropped mid-stream: those connections are garbage
        self.state = "up"

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self.listener.close()
