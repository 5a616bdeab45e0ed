"""The web app: the page at ``/`` and the WebSocket ``/ws`` that streams to it.

One connection at a time owns the model; any other gets a "busy" message and is closed
(code 1013, "try again later"). Each connection gets its own :class:`Session` (worker
thread); the handler only parses messages and forwards what the worker posts.
"""
from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..decoders import pixel_frames
from .engine import Engine
from .page import PAGE
from .protocol import MAX_MESSAGE_BYTES, MAX_PROMPT_CHARS, RequestError, parse_command
from .session import CHUNK_END, Session

log = logging.getLogger("flex.serve")
BUSY_CODE = 1013  # WebSocket "try again later"


def create_app(engine: Engine) -> Starlette:
    owner = {"session": None}  # the connection that owns the model (the event loop is the only writer)

    async def index(request):
        return HTMLResponse(PAGE)

    async def stream(ws: WebSocket):
        await ws.accept()
        if owner["session"] is not None:
            await ws.send_json({"type": "busy", "message": "another user is streaming from this server right now; "
                                                           "try again when they are done"})
            await ws.close(code=BUSY_CODE, reason="busy")
            return
        owner["session"] = ws
        try:
            await _serve(ws, engine)
        finally:
            owner["session"] = None

    app = Starlette(routes=[Route("/", index), WebSocketRoute("/ws", stream)])
    app.state.engine = engine
    app.state.owner = owner
    return app


def hello(engine: Engine) -> dict:
    height, width = engine.frame_size
    return {"type": "hello", "fps": engine.fps, "height": height, "width": width,
            "seconds": round(pixel_frames(engine.num_frames) / engine.fps, 2), "device": str(engine.device),
            "prompts": list(engine.prompts),
            "max_prompt_chars": MAX_PROMPT_CHARS, "max_message_bytes": MAX_MESSAGE_BYTES}


async def _serve(ws: WebSocket, engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue = asyncio.Queue()

    def post(item) -> None:  # from the worker thread
        try:
            loop.call_soon_threadsafe(outbox.put_nowait, item)
        except RuntimeError:  # the event loop is gone: the server is shutting down
            pass

    session = Session(engine, post)
    sender = asyncio.create_task(_send(ws, outbox, session))
    try:
        post(hello(engine))
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is None:
                post({"type": "error", "message": "messages must be JSON text, got a binary message"})
                continue
            try:
                session.submit(parse_command(message["text"]))
            except RequestError as err:
                post({"type": "error", "message": str(err)})
    finally:
        session.close()
        await asyncio.wrap_future(session.done)  # the worker has released the model
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


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
