"""The web app: the page at ``/`` and the WebSocket ``/ws`` that streams to it.

Every request passes the access policy first (:mod:`flex.serve.access`: Host, Origin, and the
token for the WebSocket). One connection at a time owns the model; any other gets a "busy"
message and is closed (code 1013, "try again later"). Each connection gets its own
:class:`Session` (worker thread); the handler only parses messages and forwards what the
worker posts, through an outbox of at most ``Limits.outbox`` messages: a page that does not
read them is dropped (:data:`~flex.serve.protocol.CLOSE_SLOW_READER`), not buffered. The owner
is closed after ``Limits.idle_timeout`` seconds without a message while no stream runs, and
after ``Limits.max_session`` seconds in all.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..decoders import pixel_frames
from .access import Access, page_headers
from .engine import Engine
from .page import PAGE, SCRIPT
from .protocol import (CLOSE_BUSY, CLOSE_IDLE, CLOSE_SESSION_LIMIT, CLOSE_SLOW_READER, MAX_MESSAGE_BYTES,
                       MAX_PROMPT_CHARS, RequestError, parse_command)
from .session import CHUNK_END, Session, remove_stale_recordings

log = logging.getLogger("flex.serve")
POLICY_CODE = 1008  # a WebSocket refused before the handshake completes: HTTP 403


@dataclass(frozen=True)
class Limits:
    idle_timeout: float = 600.0  # seconds without a message from the owner (while no stream runs)
    max_session: float = 3600.0  # seconds one connection may own the model
    outbox: int = 256  # messages waiting to be sent to the page (a chunk's frames count one each)

    def __post_init__(self):
        for name in ("idle_timeout", "max_session", "outbox"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


def create_app(engine: Engine, access: Access | None = None, limits: Limits = Limits()) -> Starlette:
    """The app; ``access`` defaults to a loopback server's policy with a fresh token."""
    access = access if access is not None else Access.create("127.0.0.1")
    for part in remove_stale_recordings(engine.out_dir):
        log.warning("removed %s, left behind by a server that was killed while recording", part)
    owner = {"session": None}  # the connection that owns the model (the event loop is the only writer)

    async def index(request):
        refusal = access.refusal(request.headers)
        if refusal is not None:
            log.warning("refused the page to %s: %s", request.client, refusal)
            return PlainTextResponse(f"forbidden: {refusal}", status_code=403)
        return HTMLResponse(PAGE, headers=page_headers(SCRIPT, request.headers["host"]))

    async def stream(ws: WebSocket):
        refusal = access.refusal(ws.headers, ws.query_params.get("token"), need_token=True)
        if refusal is not None:
            log.warning("refused a WebSocket from %s: %s", ws.client, refusal)
            await ws.close(code=POLICY_CODE)
            return
        await ws.accept()
        if owner["session"] is not None:
            await ws.send_json({"type": "busy", "message": "another user is streaming from this server right now; "
                                                           "try again when they are done"})
            await ws.close(code=CLOSE_BUSY, reason="busy")
            return
        owner["session"] = ws
        try:
            await _serve(ws, engine, limits)
        finally:
            owner["session"] = None

    app = Starlette(routes=[Route("/", index), WebSocketRoute("/ws", stream)])
    app.state.engine = engine
    app.state.owner = owner
    app.state.access = access
    return app


def hello(engine: Engine) -> dict:
    height, width = engine.frame_size
    return {"type": "hello", "fps": engine.fps, "height": height, "width": width,
            "seconds": round(pixel_frames(engine.num_frames) / engine.fps, 2), "device": str(engine.device),
            "prompts": list(engine.prompts),
            "max_prompt_chars": MAX_PROMPT_CHARS, "max_message_bytes": MAX_MESSAGE_BYTES}


async def _serve(ws: WebSocket, engine: Engine, limits: Limits) -> None:
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue = asyncio.Queue(maxsize=limits.outbox)
    overflow = asyncio.Event()

    def put(item) -> None:  # on the event loop
        if not overflow.is_set():
            try:
                outbox.put_nowait(item)
            except asyncio.QueueFull:
                overflow.set()

    def post(item) -> None:  # from the worker thread
        try:
            loop.call_soon_threadsafe(put, item)
        except RuntimeError:  # the event loop is gone: the server is shutting down
            pass

    session = Session(engine, post)
    put(hello(engine))
    tasks = [asyncio.create_task(_send(ws, outbox, session)),
             asyncio.create_task(_receive(ws, session, put, limits, overflow)), asyncio.create_task(overflow.wait())]
    close = None
    try:
        await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_COMPLETED)
        close = tasks[1].result() if tasks[1].done() else _slow_reader(limits)
    finally:
        session.close()  # drops every command still waiting
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if close is not None:
            log.info("closing the connection of %s: %s", ws.client, close[1])
            try:  # a page that reads nothing may never take the close frame: the handler returns anyway
                await asyncio.wait_for(ws.close(code=close[0], reason=close[1]), timeout=2)
            except Exception as err:
                log.debug("close failed: %s", err)
        await asyncio.wrap_future(session.done)  # the worker has released the model


def _slow_reader(limits: Limits) -> tuple[int, str]:
    return CLOSE_SLOW_READER, f"more than {limits.outbox} messages unread: the page is too slow"


async def _receive(ws: WebSocket, session: Session, put, limits: Limits,
                   overflow: asyncio.Event) -> tuple[int, str] | None:
    """Forward the page's commands; returns (close code, reason) to close, None when the page left.

    It returns by itself on an overflow too: a flood keeps ``ws.receive()`` ready, and Python 3.11's
    wait_for may then swallow a cancellation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.max_session
    while not overflow.is_set():
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=min(limits.idle_timeout, deadline - loop.time()))
        except asyncio.TimeoutError:
            if loop.time() >= deadline:
                return CLOSE_SESSION_LIMIT, f"the session limit of {limits.max_session:g} s is reached"
            if session.streaming:
                continue
            return CLOSE_IDLE, f"idle for {limits.idle_timeout:g} s"
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("text") is None:
            put({"type": "error", "message": "messages must be JSON text, got a binary message"})
            continue
        try:
            session.submit(parse_command(message["text"]))
        except RequestError as err:
            put({"type": "error", "message": str(err)})
        except Exception:  # a bug of ours: the page gets an answer, the log the detail
            log.exception("a message could not be handled")
            put({"type": "error", "message": "the server could not handle this message; see its log"})
    return _slow_reader(limits)


async def _send(ws: WebSocket, outbox: asyncio.Queue, session: Session) -> None:
    """Forward the worker's messages in order; after a send fails, keep acknowledging chunks."""
    connected = True
    while True:
        item = await outbox.get()
        if item is CHUNK_END:
            session.chunk_sent()
            continue
        if not connected:
            continue
        try:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_json(item)
        except Exception as err:  # the page went away; the receive side sees the disconnect
            log.debug("send failed: %s", err)
            connected = False
