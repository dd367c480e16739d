"""HTTP servers on loopback for the tests of remote layers and images (fimfs.remote).

- :class:`Nginx`: Debian's nginx (apt package ``nginx-light``) serving a directory on
  127.0.0.1 with a config written here; its access log says how many body bytes each
  run fetched. Under ``/slow/`` it sends 256 KB/s (an update to kill half-way).
- :class:`PlainServer`: ``python3 -m http.server``, which ignores ``Range``.
- :class:`CuttingServer`: answers ranges (or not) but closes every connection after
  half the body (a server that fails mid-transfer), optionally only the first N times.

Loopback only: every server listens on 127.0.0.1, on a port free when it starts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


_NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {state}/nginx.pid;
error_log {state}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format fim '$status $body_bytes_sent "$http_range" $uri';
    access_log {state}/access.log fim;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port}{tls};
        root {root};
        location /slow/ {{ limit_rate 256k; }}
    }}
}}
"""


class Nginx:
    """nginx serving ``root`` at ``self.url`` until :meth:`stop`; with ``tls``, over
    HTTPS with a self-signed certificate (which a client refuses)."""

    def __init__(self, root: Path, state: Path, tls: bool = False) -> None:
        if not os.access(NGINX, os.X_OK):
            pytest.skip("nginx is not installed (apt-get install nginx-light)")
        self.root = root
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        listen = ""
        if tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-subj", "/CN=127.0.0.1", "-days", "1", "-keyout",
                            str(state / "key.pem"), "-out", str(state / "cert.pem")],
                           check=True, capture_output=True)
            listen = (f" ssl;\n        ssl_certificate {state}/cert.pem;\n"
                      f"        ssl_certificate_key {state}/key.pem")
        conf = state / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(
            user="user root;" if os.getuid() == 0 else "", state=state, port=self.port,
            root=root, tls=listen))
        self.log = state / "access.log"
        self.proc = subprocess.Popen([NGINX, "-p", str(state), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(self.port, self.proc)
        except RuntimeError:
            self.stop()
            raise

    def requests(self) -> list[tuple[int, int, str, str]]:
        """(status, body bytes, Range header, path) of every request so far."""
        out = []
        if not self.log.exists():
            return out
        for line in self.log.read_text().splitlines():
            status, sent, rest = line.split(" ", 2)
            rng, _, path = rest.rpartition(" ")
            out.append((int(status), int(sent), rng.strip('"'), path))
        return out

    def bytes_sent(self) -> int:
        """Body bytes sent so far (the access log)."""
        return sum(sent for _, sent, _, _ in self.requests())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PlainServer:
    """``python3 -m http.server`` on ``root``: no Range support."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port),
             "--directory", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class CuttingServer:
    """Serves one file by ranges (ETag, Content-Range) but sends only half of each body
    before closing the connection, ``cuts`` times (then whole answers); -1: always.
    ``extra``: other files by path (``/file.sha256sum``), answered whole with 200.
    Without ``ranges``, every answer is the whole file (200, an ETag), cut the same way."""

    def __init__(self, data: bytes, cuts: int = -1, extra: dict[str, bytes] | None = None,
                 ranges: bool = True) -> None:
        self.data = data
        self.ranges = ranges
        self.extra = extra or {}
        self.cuts = cuts
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path in outer.extra:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(outer.extra[self.path])))
                    self.end_headers()
                    self.wfile.write(outer.extra[self.path])
                    return
                outer.requests += 1
                spec = self.headers.get("Range", "bytes=0-").removeprefix("bytes=")
                first, _, last = spec.partition("-")
                start = int(first)
                stop = min(len(outer.data), int(last) + 1 if last else len(outer.data))
                if not outer.ranges:
                    start, stop = 0, len(outer.data)
                body = outer.data[start:stop]
                self.send_response(206 if outer.ranges else 200)
                if outer.ranges:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{stop - 1}/{len(outer.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"fixed"')
                self.end_headers()
                cut = len(body) > 1 and outer.cuts != 0
                if cut and outer.cuts > 0:
                    outer.cuts -= 1
                self.wfile.write(body[:len(body) // 2] if cut else body)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
