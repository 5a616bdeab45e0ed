"""``flex serve``: load the model once and stream videos to a web page.

    flex serve --dit checkpoints/self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers
    # then open the URL it prints (http://127.0.0.1:7860/?token=...) in a browser

It takes the options of ``flex generate`` (model, FLEX switches, runtime), with these
meanings: ``--seconds`` / ``--frames`` is the length of each stream (its RoPE length too),
``--out`` the folder that receives saved videos, ``--prompt`` / ``--prompts`` the prompts the
page offers (a menu when several). ``--host`` / ``--port`` say where to listen; the default
127.0.0.1 is reachable from this machine only.

Usage errors are raised as :class:`flex.cli.common.CliError` before any model is loaded; the
model, pipeline and decoder come from :func:`flex.jobs.runtime.load_runtime`, as for ``flex generate``.
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from pathlib import Path

from .args import add_generate_args, settings_from_args, typed_flex_flags
from .common import EXIT_OK, CliError, HelpFormatter, log
from ..serve.access import check_origin

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
DEFAULT_PROMPT = "a red fox runs through fresh snow, cinematic, golden hour"


def add_parser(subparsers, defaults: bool = True) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``flex``'s subparsers (``defaults=False``: SUPPRESS defaults,
    as flex.cli.build_parser uses them to see what was typed)."""

    def d(value):
        return value if defaults else argparse.SUPPRESS

    p = subparsers.add_parser(
        "serve", formatter_class=HelpFormatter, help="live web demo: stream videos to a browser",
        description="Load the model once and serve a web page that streams FLEX videos while they are "
                    "generated: switch prompts, stop / restart, see latent and decoded FPS, save videos.",
        epilog="example: flex serve --dit self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers "
               "--seconds 60  (then open the URL it prints)",
    )
    add_generate_args(p, defaults)
    for group in p._mutually_exclusive_groups:  # prompts come from the page: --prompt is optional here
        if any(a.dest == "prompt" for a in group._group_actions):
            group.required = False
    server = p.add_argument_group("server")
    server.add_argument("--host", default=d(DEFAULT_HOST),
                        help="address to listen on (0.0.0.0: every interface, reachable by anyone on the network)")
    server.add_argument("--port", type=int, default=d(DEFAULT_PORT), help="TCP port (0: any free port)")
    server.add_argument("--allow-origin", action="append", default=d([]), metavar="URL",
                        help="also accept pages served from this origin (scheme://host[:port], e.g. a reverse "
                             "proxy's https://demo.example.org); repeatable. Other sites' pages are refused")
    server.add_argument("--idle-timeout", type=float, default=d(600.0), metavar="SECONDS",
                        help="close the connection that owns the model after this long without a message "
                             "from it while no stream runs")
    server.add_argument("--max-session", type=float, default=d(3600.0), metavar="SECONDS",
                        help="close the connection that owns the model after this long in all")
    return p


def check_args(args, explicit: set[str] | None = None):
    """flex generate's checks plus the server's: the GenerationSettings (nothing is loaded).

    explicit: the options typed on the command line (flex.cli.explicit_flags), for --no-flex."""
    if Path(args.out).suffix.lower() == ".mp4":
        raise CliError(f"--out must be a folder for flex serve (saved videos are named by time), got {args.out!r}")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be in [0, 65535], got {args.port}")
    for flag in ("idle_timeout", "max_session"):
        if not 0 < getattr(args, flag) < float("inf"):
            raise CliError(f"--{flag.replace('_', '-')} must be > 0 seconds, got {getattr(args, flag)}")
    for origin in args.allow_origin:
        try:
            check_origin(origin)
        except ValueError as err:
            raise CliError(f"--allow-origin: {err}") from None
    if args.prompt is None and args.prompts is None:
        args.prompt = DEFAULT_PROMPT
    return settings_from_args(args, typed_flex_flags(args) if explicit is None else explicit)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before the model is loaded so that a taken port fails fast."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(16)
    except OSError as err:
        raise CliError(f"cannot listen on --host {host} --port {port}: {err}") from err
    return sock


def build_server(args, explicit: set[str] | None = None):
    """(uvicorn.Server, listening socket, url): the arguments checked, the model loaded once."""
    import uvicorn

    from ..serve.access import Access
    from ..serve.app import Limits, create_app
    from ..serve.connections import MAX_CONNECTIONS, GuardedH11Protocol
    from ..serve.engine import Engine
    from ..serve.protocol import MAX_MESSAGE_BYTES

    settings = check_args(args, explicit)
    sock = listen(args.host, args.port)
    try:
        engine = Engine.from_settings(settings)
        access = Access.create(args.host, args.allow_origin)
        app = create_app(engine, access, Limits(idle_timeout=args.idle_timeout, max_session=args.max_session))
        config = uvicorn.Config(app, log_level="warning", ws_max_size=MAX_MESSAGE_BYTES, ws_max_queue=4,
                                ws_ping_interval=20, ws_ping_timeout=20, http=GuardedH11Protocol,
                                limit_concurrency=MAX_CONNECTIONS, backlog=MAX_CONNECTIONS, timeout_keep_alive=5,
                                h11_max_incomplete_event_size=16384)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/?token={access.token}"
    return uvicorn.Server(config), sock, url


def run(args, explicit: set[str] | None = None) -> int:
    """``flex serve``: serve until interrupted (Ctrl-C). Returns the exit status."""
    server, sock, url = build_server(args, explicit)
    log(f"serving on {url} (Ctrl-C to stop; the token in the URL is needed to use it)")
    exposure = server.config.app.state.access.exposure()
    if exposure is not None:
        log(exposure)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK


@contextlib.contextmanager
def serve_in_thread(args, explicit: set[str] | None = None):
    """Run the server on a background thread (notebooks, tests); yields (url, app); stops on exit."""
    server, sock, url = build_server(args, explicit)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="flex-serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped while starting (see its log)")
            time.sleep(0.01)
        yield url, server.config.app
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
