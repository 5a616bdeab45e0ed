"""``flex serve``: load the model once and stream videos to a web page.

    flex serve --dit checkpoints/self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers
    # then open http://127.0.0.1:7860 in a browser

It takes the options of ``flex generate`` (model, FLEX switches, runtime), with these
meanings: ``--seconds`` / ``--frames`` is the length of each stream (its RoPE length too),
``--out`` the folder that receives saved videos, ``--prompt`` / ``--prompts`` the prompts the
page offers (a menu when several). ``--host`` / ``--port`` say where to listen; the default
127.0.0.1 is reachable from this machine only.

Register it in ``flex.cli`` with ``add_parser(subparsers, defaults)`` and dispatch
``run(args, explicit)``; usage errors are raised as :class:`flex.cli.CliError` before any
model is loaded.
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from pathlib import Path

from .. import cli as flex_cli
from ..cli import CliError
from ..pipeline import RECACHE_MODES

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
DEFAULT_PROMPT = "a red fox runs through fresh snow, cinematic, golden hour"


def add_parser(subparsers, defaults: bool = True) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``flex``'s subparsers (``defaults=False``: SUPPRESS defaults,
    as flex.cli.build_parser uses them to see what was typed)."""

    def d(value):
        return value if defaults else argparse.SUPPRESS

    p = subparsers.add_parser(
        "serve", formatter_class=flex_cli._HelpFormatter, help="live web demo: stream videos to a browser",
        description="Load the model once and serve a web page that streams FLEX videos while they are "
                    "generated: switch prompts, stop / restart, see latent and decoded FPS, save videos.",
        epilog="example: flex serve --dit self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers "
               "--seconds 60  (then open http://127.0.0.1:7860)",
    )
    flex_cli._add_generate_args(p, defaults)
    for group in p._mutually_exclusive_groups:  # prompts come from the page: --prompt is optional here
        if any(a.dest == "prompt" for a in group._group_actions):
            group.required = False
    server = p.add_argument_group("server")
    server.add_argument("--host", default=d(DEFAULT_HOST),
                        help="address to listen on (0.0.0.0: every interface, reachable by anyone on the network)")
    server.add_argument("--port", type=int, default=d(DEFAULT_PORT), help="TCP port (0: any free port)")
    if not any(a.dest == "recache" for a in p._actions):  # unless flex generate has it already
        server.add_argument("--recache", choices=RECACHE_MODES, default=d("window"),
                            help="KV re-cache at a prompt switch: window = recompute the window frames under the "
                                 "new prompt (LongLive), all = the sink frames too, none = keep the old K/V")
    return p


def _typed_flex_flags(args) -> set[str]:
    """The --no-flex flags given with a non-default value (when the typed ones are not known)."""
    scratch = argparse.ArgumentParser()
    flex_cli._add_generate_args(scratch)
    return {name for name in flex_cli.NO_FLEX_FLAGS if getattr(args, name) != scratch.get_default(name)}


def check_args(args, explicit: set[str] | None = None):
    """flex generate's checks plus the server's: the GenerationSettings (nothing is loaded).

    explicit: the options typed on the command line (flex.cli._explicit), for --no-flex."""
    if Path(args.out).suffix.lower() == ".mp4":
        raise CliError(f"--out must be a folder for flex serve (saved videos are named by time), got {args.out!r}")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be in [0, 65535], got {args.port}")
    if args.prompt is None and args.prompts is None:
        args.prompt = DEFAULT_PROMPT
    return flex_cli.settings_from_args(args, _typed_flex_flags(args) if explicit is None else explicit)


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

    from ..generation import _quiet_library_progress
    from .app import create_app
    from .engine import Engine
    from .protocol import MAX_MESSAGE_BYTES

    settings = check_args(args, explicit)
    sock = listen(args.host, args.port)
    try:
        _quiet_library_progress()
        engine = Engine.from_settings(settings, recache=settings.recache or settings.model_preset.recache)
        config = uvicorn.Config(create_app(engine), log_level="warning", ws_max_size=MAX_MESSAGE_BYTES)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return uvicorn.Server(config), sock, url


def run(args, explicit: set[str] | None = None) -> int:
    """``flex serve``: serve until interrupted (Ctrl-C). Returns the exit status."""
    server, sock, url = build_server(args, explicit)
    flex_cli._log(f"serving on {url} (Ctrl-C to stop)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        flex_cli._log(f"--host {args.host}: anyone who can reach this address can use the model")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return flex_cli.EXIT_OK


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
