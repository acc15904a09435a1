"""A TLS-terminating TCP proxy in front of Orthanc, for the HTTPS tests.

Debian's Orthanc 1.10 crashes (SIGSEGV) on its first HTTPS request, so HTTPS goes
through this proxy: Python's ssl module on the server side (the router's own listener
context, so mutual TLS can be required), plain TCP to Orthanc behind it. Binds port 0
and reports the port."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading


class TLSProxy:
    def __init__(self, context: ssl.SSLContext, upstream: tuple[str, int]) -> None:
        self.context = context
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TLSProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        try:
            back = socket.create_connection(self.upstream)
        except OSError:
            tls.close()
            return
        pump = threading.Thread(target=_pump, args=(back, tls), daemon=True)
        pump.start()
        _pump(tls, back)
        pump.join()
        tls.close()
        back.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copies until either side closes, then closes the other direction too."""
    try:
        while True:
            data = src.recv(256 * 1024)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
