"""The messages between the page and the server (JSON text over the WebSocket).

Page -> server, one JSON object per message:

    {"type": "start", "prompt": "...", "seed": 0}   start a stream (restarts a running one)
    {"type": "switch", "prompt": "...", "mode": m}  new prompt from the next chunk on; mode
                                                    (optional) one of flex.switching.SWITCH_MODES
    {"type": "stop"}                                stop after the current chunk
    {"type": "save"}                                save the stopped stream's video (mp4)

Server -> page: JSON objects with a "type" (hello, busy, started, chunk, switched, stopped,
saved, error) and, after each "chunk" message, that chunk's frames as binary JPEG messages.

Every malformed message is answered with an "error" (its bad value quoted at most
``MAX_ECHO_CHARS`` long) and the connection is kept. The server closes a connection with one of
the ``CLOSE_*`` codes below (the reason says why); a handshake that fails the access policy
(:mod:`flex.serve.access`) is refused with HTTP 403 before any message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..switching import SWITCH_MODES

MAX_PROMPT_CHARS = 2000
MAX_MESSAGE_BYTES = 16 * 1024  # larger messages are refused by the WebSocket layer itself
MAX_SEED = 2**63 - 1
MAX_ECHO_CHARS = 60  # a bad value is quoted back at most this long
FIELDS = {"start": {"prompt", "seed"}, "switch": {"prompt", "mode"}, "stop": set(), "save": set()}

CLOSE_BUSY = 1013  # another connection owns the model ("try again later")
CLOSE_TOO_LARGE = 1009  # a message over MAX_MESSAGE_BYTES (sent by the WebSocket layer)
CLOSE_SLOW_READER = 1008  # the page does not read what the server sends: dropped, not buffered
CLOSE_IDLE = 4000  # no message from the page, and no stream running, for the idle timeout
CLOSE_SESSION_LIMIT = 4001  # the connection held the model for the maximum session length


class RequestError(ValueError):
    """A malformed or invalid message from the page (answered with an "error" message)."""


@dataclass(frozen=True)
class Command:
    type: str
    prompt: str | None = None
    seed: int = 0
    mode: str | None = None  # a switch's mode (None: the server's --recache)


def echo(value) -> str:
    """``repr(value)``, cut to MAX_ECHO_CHARS: what an error message quotes of a bad value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"  # repr of a huge int is slow, and may fail
    text = repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS - 3] + "..."


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(f"prompt is not valid text: it holds a lone surrogate at character {err.start}") from None
    prompt = prompt.strip()
    if not prompt:
        raise RequestError("prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"prompt has {len(prompt)} characters, at most {MAX_PROMPT_CHARS} are allowed")
    return prompt


def parse_command(text: str) -> Command:
    """One page message -> Command; RequestError says what is wrong with it."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise RequestError(f"message is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestError("message is nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise RequestError("message holds a number with too many digits") from None
    if not isinstance(msg, dict):
        raise RequestError(f"message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise RequestError(f"type must be one of {sorted(FIELDS)}, got {echo(kind)}")
    unknown = set(msg) - FIELDS[kind] - {"type"}
    if unknown:
        raise RequestError(f"{kind}: unknown field(s) {echo(sorted(unknown))}")
    if kind in ("start", "switch"):
        prompt = check_prompt(msg.get("prompt"))
        seed = msg.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise RequestError(f"seed must be an integer in [0, {MAX_SEED}], got {echo(seed)}")
        mode = msg.get("mode")
        if mode is not None and mode not in SWITCH_MODES:
            raise RequestError(f"mode must be one of {SWITCH_MODES}, got {echo(mode)}")
        return Command(kind, prompt, seed, mode)
    return Command(kind)
