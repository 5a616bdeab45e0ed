"""Who may use ``flex serve``: the Host and Origin checks, the per-run token, the page's headers.

A request is let in only when

* its ``Host`` header names this server: an IP address (a DNS-rebinding attack needs a name),
  ``localhost``, the address it listens on, this machine's name, or the host of an allowed
  origin. A page on another site whose name was made to resolve here is refused.
* its ``Origin`` header, when there is one (browsers always send it on a WebSocket handshake),
  is this server itself (``http(s)://`` + the Host header) or one of the allowed origins (a
  reverse proxy's public address, ``--allow-origin``). Another site's page is refused.
* for the WebSocket: the ``token`` query parameter is this run's secret, a random string made
  at start and printed in the URL (``http://127.0.0.1:7860/?token=...``), as Jupyter does.

The page itself holds no secret (it reads the token from its own address) and is sent with a
Content-Security-Policy that runs only its own script and forbids framing it.
"""
from __future__ import annotations

import hashlib
import base64
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_origin(origin: str) -> str:
    """An ``--allow-origin`` value as browsers send it (``scheme://host[:port]``); ValueError otherwise."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"an allowed origin is scheme://host[:port] (e.g. https://demo.example.org), got {origin!r}")
    return origin.rstrip("/").lower()


def _host_name(host_header: str) -> str:
    """The host part of a Host header ("[::1]:7860" -> "::1", "Example.org:80" -> "example.org")."""
    match = re.fullmatch(r"\[([^\]]*)\](:\d+)?|([^:]*)(:\d+)?", host_header.strip())
    if match is None:
        return ""
    return (match.group(1) if match.group(1) is not None else match.group(3) or "").lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Access:
    """The access policy of one server run (see the module docstring)."""

    bound_host: str
    allowed_origins: frozenset[str] = frozenset()
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    @classmethod
    def create(cls, bound_host: str, allowed_origins=()) -> "Access":
        return cls(bound_host.lower(), frozenset(check_origin(o) for o in allowed_origins))

    def host_names(self) -> frozenset[str]:
        names = {"localhost", self.bound_host, socket.gethostname().lower(), socket.getfqdn().lower()}
        return frozenset(names | {urlsplit(o).hostname for o in self.allowed_origins})

    def refusal(self, headers, token: str | None = None, need_token: bool = False) -> str | None:
        """Why a request with these headers (and query token) is refused; None when it is let in."""
        host_header = headers.get("host", "")
        host = _host_name(host_header)
        if not (_is_ip(host) or host in self.host_names()):
            return f"Host {host_header[:80]!r} is not a name of this server"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.allowed_origins | {
                f"http://{host_header.lower()}", f"https://{host_header.lower()}"}:
            return f"Origin {origin[:80]!r} is not this server (start it with --allow-origin to allow it)"
        if need_token and not secrets.compare_digest((token or "").encode(), self.token.encode()):
            return "a valid token is needed: open the URL printed when the server started"
        return None

    def exposure(self) -> str | None:
        """What listening on a non-loopback address exposes (printed at start), or None."""
        if is_loopback(self.bound_host):
            return None
        return (f"--host {self.bound_host}: the page and the model are reachable by anyone who can reach this "
                f"address and knows the token in the URL (device, prompts, saved videos in the output folder); "
                f"the traffic is not encrypted (put an HTTPS reverse proxy in front and give --allow-origin)")


def page_headers(script: str, host_header: str) -> dict[str, str]:
    """Response headers of the page: a CSP that runs only ``script`` (the page's own) and no framing."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    host = host_header.strip()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src blob:; "
           f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'; "
           f"frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
