"""Local HTTP servers on 127.0.0.1 for the download tests: serve, drop, or stall."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fake_server(payload: bytes = b"", mode: str = "serve", content_type: str = "application/octet-stream",
                name: str = "file") -> Iterator[str]:
    """Yield the URL (``.../<name>``) of a one-thread server answering every request as ``mode`` says.

    ``"serve"`` sends ``payload``; ``"cut"`` announces its full length, sends half and closes;
    ``"stall"`` sends the headers and half, then keeps the connection open without sending;
    ``"silent"`` accepts connections and never answers.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()
    held: list[socket.socket] = []

    def answer(conn: socket.socket) -> None:
        conn.recv(65536)
        if mode == "silent":
            return
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        body = payload if mode == "serve" else payload[: len(payload) // 2]
        conn.sendall(head + body)
        if mode in ("serve", "cut"):
            conn.close()

    def run() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            answer(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/{name}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
