"""keraslm-serve's process: load the models, serve REST (uvicorn) and gRPC, stop cleanly.

SIGTERM or Ctrl-C: both servers stop taking new requests, the requests in flight finish (up to
GRACE_SECONDS), then the models are closed and the process exits 0.
"""

import dataclasses
import errno
import os
import signal
import socket
import sys
import threading

import uvicorn

from keraslm.serving.grpc_api import bind_grpc_server
from keraslm.serving.metrics import Metrics
from keraslm.serving.models import ModelManager, log
from keraslm.serving.rest import create_app

GRACE_SECONDS = 60


@dataclasses.dataclass
class ServerConfig:
    specs: list
    rest_api_host: str = "127.0.0.1"
    rest_api_port: int = 8501
    grpc_port: int = 8500
    batching: object = None  # settings.BatchingOptions, or None without --enable_batching
    poll_seconds: float = 1.0
    max_request_bytes: int = 8 << 20
    playground: bool = True
    rest_timeout_seconds: float = 30.0  # --rest_api_timeout_in_ms / 1000
    config_reader: object = None  # callable() -> [ModelSpec]: re-reads --model_config_file
    config_poll_seconds: float = 0.0
    allow_unavailable_labels: bool = False


def _listening_socket(host, port, flag):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP, and without it Nagle's algorithm held each response's body
    # (h11 writes headers and body apart) for the client's delayed ACK: 40 ms per keep-alive
    # request (BENCHMARKS.md, "Serving").
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
            raise OSError(
                f"--rest_api_host={host}: not an address of this machine ({error.strerror}); use 127.0.0.1, 0.0.0.0 "
                "or one of its addresses"
            ) from None
        raise OSError(f"{flag}={port}: cannot listen on {host}:{port}: {error.strerror}; pick another {flag}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _url_host(host):
    return f"[{host}]" if ":" in host else host


def serve(config):
    """Runs until SIGTERM/SIGINT."""
    # uvicorn catches these while it serves, shuts down gracefully and then re-raises the signal
    # to the handler it found: this one, so that the process goes on to stop gRPC and close the
    # models and exits 0, instead of being killed by the default handler.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    manager = ModelManager(
        config.specs,
        batching=config.batching,
        poll_seconds=config.poll_seconds,
        config_reader=config.config_reader,
        config_poll_seconds=config.config_poll_seconds,
        allow_unavailable_labels=config.allow_unavailable_labels,
    )
    metrics = Metrics()
    # Both ports are taken before the models load, so a clash fails at once, not after loading.
    sock = None
    if config.rest_api_port:
        sock = _listening_socket(config.rest_api_host, config.rest_api_port, "--rest_api_port")
    grpc_server = None
    serving = False
    try:
        if config.grpc_port:
            grpc_server, grpc_port = bind_grpc_server(
                manager, config.rest_api_host, config.grpc_port, config.max_request_bytes, metrics
            )
        manager.load_initial()
        manager.start_watching()
        serving = True
        if grpc_server is not None:
            grpc_server.start()
            log(f"gRPC API at {_url_host(config.rest_api_host)}:{grpc_port}")
        if sock is not None:
            app = create_app(
                manager, metrics, config.max_request_bytes, playground=config.playground, timeout_seconds=config.rest_timeout_seconds
            )
            server = uvicorn.Server(
                uvicorn.Config(
                    app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACE_SECONDS, lifespan="off"
                )
            )
            url = f"http://{_url_host(config.rest_api_host)}:{sock.getsockname()[1]}"
            log(f"REST API at {url}" + ("  (playground page at /)" if config.playground else ""))
            # run() rather than asyncio.run(serve()): it takes uvloop's event loop when installed.
            server.run(sockets=[sock])
        else:
            while not stopping.wait(3600):
                pass
    finally:
        if serving:
            log("shutting down: finishing the requests in flight")
        if grpc_server is not None:
            grpc_server.stop(GRACE_SECONDS if serving else 0).wait()
        manager.close()
        if sock is not None:
            sock.close()
    log("stopped")
    # A request whose client gave up (a gRPC deadline) can still be running in the graph, in a
    # worker thread that Python would wait for at exit: the grace period is over, so leave now.
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(0)
