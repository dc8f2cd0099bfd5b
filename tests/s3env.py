"""A real S3 endpoint on loopback (moto's server, as s3fs's own tests do) and a fault-injecting
HTTP proxy in front of it (503 SlowDown, dropped connections, stalls, or a prefix that stays down)."""

from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


@dataclass
class Faults:
    rate: float = 0.0  # fraction of requests that fail (503 / drop / stall, chosen at random)
    down_prefix: str | None = None  # PUTs whose path contains this always get 503
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "503": 0, "drop": 0, "stall": 0, "down": 0})

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()

    def pick(self, method: str, path: str) -> str:
        with self.lock:
            if self.down_prefix and method == "PUT" and self.down_prefix in path:
                kind = "down"
            elif self.rng.random() < self.rate:
                kind = self.rng.choice(["503", "drop", "stall"])
            else:
                kind = "ok"
            self.counts[kind] += 1
            return kind


SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")


def start_proxy(target: str, faults: Faults) -> tuple[ThreadingHTTPServer, str]:
    host, port = target.removeprefix("http://").split(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            kind = faults.pick(self.command, self.path)
            if kind in ("503", "down"):
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOWDOWN)))
                self.end_headers()
                self.wfile.write(SLOWDOWN)
                return
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "stall":
                time.sleep(0.5)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def make_bucket(endpoint: str, bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)


def storage_options(endpoint: str, **extra: object) -> dict[str, object]:
    return {"endpoint_url": endpoint, "skip_instance_cache": True, **extra}


os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
