"""The messages between the page and the server (JSON text over the WebSocket).

Page -> server, one JSON object per message:

    {"type": "start", "prompt": "...", "seed": 0}   start a stream (restarts a running one)
    {"type": "switch", "prompt": "...", "mode": m}  new prompt from the next chunk on; mode
                                                    (optional) one of flex.switching.SWITCH_MODES
    {"type": "stop"}                                stop after the current chunk
    {"type": "save"}                                save the stopped stream's video (mp4)

Server -> page: JSON objects with a "type" (hello, busy, started, chunk, switched, stopped,
saved, error) and, after each "chunk" message, that chunk's frames as binary JPEG messages.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..switching import SWITCH_MODES

MAX_PROMPT_CHARS = 2000
MAX_MESSAGE_BYTES = 16 * 1024  # larger messages are refused by the WebSocket layer itself
MAX_SEED = 2**63 - 1
FIELDS = {"start": {"prompt", "seed"}, "switch": {"prompt", "mode"}, "stop": set(), "save": set()}


class RequestError(ValueError):
    """A malformed or invalid message from the page (answered with an "error" message)."""


@dataclass(frozen=True)
class Command:
    type: str
    prompt: str | None = None
    seed: int = 0
    mode: str | None = None  # a switch's mode (None: the server's --recache)


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be a string, got {type(prompt).__name__}")
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
    if not isinstance(msg, dict):
        raise RequestError(f"message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if kind not in FIELDS:
        raise RequestError(f"type must be one of {sorted(FIELDS)}, got {kind!r}")
    unknown = set(msg) - FIELDS[kind] - {"type"}
    if unknown:
        raise RequestError(f"{kind}: unknown field(s) {sorted(unknown)}")
    if kind in ("start", "switch"):
        prompt = check_prompt(msg.get("prompt"))
        seed = msg.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise RequestError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        mode = msg.get("mode")
        if mode is not None and mode not in SWITCH_MODES:
            raise RequestError(f"mode must be one of {SWITCH_MODES}, got {mode!r:.40}")
        return Command(kind, prompt, seed, mode)
    return Command(kind)
