"""``flex serve`` as an attacker and a careless client use it (tiny random model, loopback only):
foreign Origin / Host, no token, flooding and slow clients, work queued before a disconnect,
switch bursts, idle owners, same-second saves, malformed frames, server paths in errors, stale
temporary files, and a soak of connect / flood / disconnect cycles."""
import base64
import hashlib
import http.client
import json
import os
import socket
import threading
from urllib.parse import urlsplit

import pytest

from test_serve import connect, receive, send, serve_args, until, wait_released, ws_url
from tiny_assets import make_dit_checkpoint, make_wan_dir
from flex.cli.common import CliError
from flex.cli import serve as serve_cli
from flex.serve.access import Access, page_headers
from flex.serve.app import create_app
from flex.serve.page import SCRIPT
from flex.serve.protocol import (CLOSE_IDLE, CLOSE_SESSION_LIMIT, CLOSE_SLOW_READER, MAX_ECHO_CHARS,
                                 RequestError, parse_command)
from flex.serve.session import MAX_PENDING
from flex.video import read_video


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-trust-assets")
    return {"wan": make_wan_dir(root / "wan"), "dit": make_dit_checkpoint(root / "tiny.pt")}


def _start(assets, out, *extra):
    context = serve_cli.serve_in_thread(serve_args(assets, out, "--frames", "30", *extra))
    url, app = context.__enter__()
    parts = urlsplit(url)
    return context, {"ws": ws_url(url, app), "out": out, "app": app, "port": parts.port,
                     "token": app.state.access.token}


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory, one_thread):
    context, info = _start(assets, tmp_path_factory.mktemp("serve-trust-out"))
    yield info
    context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def impatient_server(assets, tmp_path_factory, one_thread):
    """A server that closes idle owners after 0.3 s and every owner after 1.5 s."""
    context, info = _start(assets, tmp_path_factory.mktemp("serve-trust-impatient"),
                           "--idle-timeout", "0.3", "--max-session", "1.5")
    yield info
    context.__exit__(None, None, None)


# ---------------------------------------------------------------- a WebSocket client by hand


def handshake(port, token, origin=None, host=None, rcvbuf=None):
    """(socket, HTTP status) of a WebSocket handshake with exactly these headers."""
    sock = socket.socket()
    if rcvbuf is not None:  # a small receive buffer: a client that does not read is found out fast
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET /ws?token={token} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1])


def frame(payload, opcode=1) -> bytes:
    """A masked client frame (text by default)."""
    data = payload.encode() if isinstance(payload, str) else payload
    mask = os.urandom(4)
    n = len(data)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def read_until_closed(sock) -> tuple[list, int | None, bool]:
    """Server frames until the connection ends, answering a close frame as a client must:
    ([(opcode, payload)], the close code or None, whether it ended rather than timed out)."""
    data, frames, code, i = b"", [], None, 0
    sock.settimeout(60)
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            return frames, code, True
        except TimeoutError:
            return frames, code, False
        if not chunk:
            return frames, code, True
        data += chunk
        while True:  # parse the complete frames received so far
            if i + 2 > len(data):
                break
            opcode, n, start = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
            if n >= 126:
                width = 2 if n == 126 else 8
                if start + width > len(data):
                    break
                n, start = int.from_bytes(data[start:start + width], "big"), start + width
            if start + n > len(data):
                break
            frames.append((opcode, data[start:start + n]))
            i = start + n
            if opcode == 8 and code is None:
                code = int.from_bytes(data[start:start + 2], "big") if n >= 2 else None
                try:
                    sock.sendall(frame(data[start:start + 2], opcode=8))
                except OSError:
                    pass


def get_page(port, host=None, origin=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("GET", "/", skip_host=True)
    conn.putheader("Host", host or f"127.0.0.1:{port}")
    if origin is not None:
        conn.putheader("Origin", origin)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


# ---------------------------------------------------------------- origin, host, token, headers


def test_foreign_origin_host_and_missing_token_are_refused(server):
    port, token = server["port"], server["token"]
    own = f"http://127.0.0.1:{port}"
    for origin, host, tok in [("http://evil.example", None, token),  # another site's page
                              (own, f"rebound.example:{port}", token),  # DNS rebinding: a foreign name
                              (None, f"rebound.example:{port}", token),
                              (own, None, ""), (own, None, "wrong"), (own, None, token[:-1])]:
        sock, status = handshake(port, tok, origin, host)
        sock.close()
        assert status == 403, (origin, host, tok)
    sock, status = handshake(port, token, own)  # the page's own origin, with the token
    assert status == 101
    sock.sendall(frame(b"\x03\xe8", opcode=8))  # close (1000)
    frames, _, _ = read_until_closed(sock)
    assert json.loads(frames[0][1])["type"] == "hello"
    sock.close()
    wait_released(server)


def test_page_refuses_foreign_host_and_origin_and_is_sent_with_a_csp(server):
    port = server["port"]
    assert get_page(port, host=f"rebound.example:{port}")[0].status == 403
    assert get_page(port, origin="http://evil.example")[0].status == 403
    response, body = get_page(port)
    assert response.status == 200 and b"<script>" in body
    csp = response.getheader("Content-Security-Policy")
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.getheader("X-Frame-Options") == "DENY"
    assert csp == page_headers(SCRIPT, f"127.0.0.1:{port}")["Content-Security-Policy"]
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and f"<script>{SCRIPT}</script>".encode() in body


def test_access_policy_allow_list_and_exposure():
    access = Access.create("0.0.0.0", ["https://Demo.Example.org"])
    assert access.refusal({"host": "demo.example.org", "origin": "https://demo.example.org"}) is None
    assert access.refusal({"host": "demo.example.org", "origin": "https://evil.example.org"}) is not None
    assert access.refusal({"host": "10.1.2.3:7860", "origin": "http://10.1.2.3:7860"}) is None
    assert access.refusal({"host": "[::1]:7860"}) is None
    assert "a valid token" in access.refusal({"host": "[::1]:7860"}, "nope", need_token=True)
    assert access.refusal({"host": "[::1]:7860"}, access.token, need_token=True) is None
    assert "reachable by anyone" in access.exposure() and Access.create("127.0.0.1").exposure() is None
    assert Access.create("127.0.0.1").token != Access.create("127.0.0.1").token


def test_bad_server_options(assets, tmp_path):
    with pytest.raises(CliError, match="--allow-origin"):
        serve_cli.check_args(serve_args(assets, tmp_path, "--allow-origin", "evil.example"))
    with pytest.raises(CliError, match="--idle-timeout must be > 0"):
        serve_cli.check_args(serve_args(assets, tmp_path, "--idle-timeout", "0"))
    with pytest.raises(CliError, match="--max-session must be > 0"):
        serve_cli.check_args(serve_args(assets, tmp_path, "--max-session", "nan"))


# ---------------------------------------------------------------- malformed messages


@pytest.mark.parametrize("text, expected", [
    ('{"type": ["start"]}', "type must be one of"),
    ("{}", "type must be one of"),
    ('{"type": "start", "prompt": "a cat", "seed": ' + "9" * 5000 + "}", "too many digits"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ('{"type": "start", "prompt": "a \\ud800 cat"}', "lone surrogate"),
    ('{"type": "' + "x" * 1000 + '"}', "type must be one of"),
])
def test_malformed_messages_are_answered_and_the_connection_kept(server, text, expected):
    with pytest.raises(RequestError, match=expected) as err:
        parse_command(text)
    assert len(str(err.value)) < 200 + MAX_ECHO_CHARS  # a bad value is never quoted whole
    with connect(server) as ws:
        ws.send(text)
        message = receive(ws)
        assert message["type"] == "error" and expected in message["message"]
        assert len(message["message"]) < 200 + MAX_ECHO_CHARS
        send(ws, type="stop")  # still connected and served
        assert "no stream is running" in receive(ws)["message"]
    wait_released(server)


# ---------------------------------------------------------------- bounded queues


def test_flooding_client_that_reads_nothing_is_dropped(server):
    """Bad messages sent without reading a reply: once the replies fill the pipe, the server drops
    the connection (with CLOSE_SLOW_READER when the close frame still fits), it does not buffer."""
    sock, status = handshake(server["port"], server["token"], rcvbuf=4096)
    assert status == 101
    sock.settimeout(2)
    batch, sent = frame("{bad") * 1000, 0
    try:
        while sent < 2_000_000:  # each is answered by an error the client does not read
            sock.sendall(batch)
            sent += 1000
    except OSError:  # the server stopped reading: it dropped the connection
        pass
    frames, code, ended = read_until_closed(sock)
    sock.close()
    assert sent < 2_000_000, "the server kept taking messages from a client that reads nothing"
    assert ended, "the server kept the connection of a client that reads nothing"
    assert code in (CLOSE_SLOW_READER, None)
    assert len([f for f in frames if f[0] == 1]) < sent
    wait_released(server)
    with connect(server) as ws:  # the model is free for the next page
        send(ws, type="stop")
        assert "no stream is running" in receive(ws)["message"]
    wait_released(server)


@pytest.fixture
def blocked_encoder(server, monkeypatch):
    """The worker blocks in its first prompt encoding until ``release`` is set; counts streams."""
    engine = server["app"].state.engine
    entered, release, streams = threading.Event(), threading.Event(), []
    encode, open_stream = engine.encode, engine.open_stream

    def slow_encode(prompt):
        entered.set()
        assert release.wait(60)
        return encode(prompt)

    def counted_open_stream(*args, **kwargs):
        streams.append(args)
        return open_stream(*args, **kwargs)

    monkeypatch.setattr(engine, "encode", slow_encode)
    monkeypatch.setattr(engine, "open_stream", counted_open_stream)
    yield entered, release, streams
    release.set()


def test_switch_burst_is_coalesced_and_pending_commands_are_bounded(server, blocked_encoder):
    entered, release, streams = blocked_encoder
    with connect(server) as ws:
        send(ws, type="start", prompt="a cat runs on the beach")
        assert entered.wait(60)  # the worker holds the first command; the rest wait
        for i in range(300):
            send(ws, type="switch", prompt=f"prompt number {i}")  # coalesced: one waiting switch
        send(ws, type="stop")
        for _ in range(MAX_PENDING + 3):  # 2 wait already: MAX_PENDING - 2 more fit, then errors
            send(ws, type="save")
        errors = [receive(ws) for _ in range(5)]
        assert all(e["type"] == "error" and f"{MAX_PENDING} commands are waiting" in e["message"] for e in errors)
        release.set()
        messages = []
        while not messages or messages[-1]["type"] != "stopped":
            messages.append(receive(ws))
        assert [m["type"] for m in messages[:2]] == ["started", "chunk"]
        assert messages[-1]["reason"] == "stopped"
        assert not any(m["type"] == "switched" for m in messages)  # superseded by the stop: never encoded
    wait_released(server)
    assert len(streams) == 1


def test_disconnect_drops_queued_work(server, blocked_encoder):
    entered, release, streams = blocked_encoder
    with connect(server) as ws:
        send(ws, type="start", prompt="a cat runs on the beach")
        assert entered.wait(60)
        for i in range(100):
            send(ws, type="start", prompt="a dog", seed=i)
        ws.socket.shutdown(socket.SHUT_RDWR)
    release.set()
    wait_released(server)
    assert len(streams) == 1, f"{len(streams)} streams ran after the page left"


# ---------------------------------------------------------------- idle owners


def test_idle_owner_is_closed(impatient_server):
    with connect(impatient_server) as ws:
        with pytest.raises(Exception) as closed:
            receive(ws)
        assert closed.value.rcvd.code == CLOSE_IDLE and "idle" in closed.value.rcvd.reason
    wait_released(impatient_server)


def test_owner_is_closed_at_the_session_limit(impatient_server):
    with connect(impatient_server) as ws:
        with pytest.raises(Exception) as closed:
            while True:  # busy, never idle: only the session limit ends it
                send(ws, type="stop")
                assert "no stream is running" in receive(ws)["message"]
        assert closed.value.rcvd.code == CLOSE_SESSION_LIMIT
    wait_released(impatient_server)


# ---------------------------------------------------------------- saves and server paths


def _stream_and_save(ws, seed):
    send(ws, type="start", prompt="a cat runs on the beach", seed=seed)
    until(ws, "chunk")
    send(ws, type="stop")
    stopped = until(ws, "stopped")
    send(ws, type="save")
    return stopped["frames"], until(ws, "saved")


def test_same_second_saves_never_overwrite(server, monkeypatch):
    monkeypatch.setattr("flex.serve.session.time.strftime", lambda fmt: "20260101-000000")
    taken = server["out"] / "flex-20260101-000000-seed5.mp4"
    taken.write_bytes(b"an earlier video")
    with connect(server) as ws:
        saves = [_stream_and_save(ws, 5) for _ in range(3)]
    wait_released(server)
    names = [saved["file"] for _, saved in saves]
    assert names == [f"flex-20260101-000000-seed5-{n}.mp4" for n in (2, 3, 4)]
    for frames, saved in saves:
        assert read_video(server["out"] / saved["file"]).shape[0] == frames == saved["frames"]
    assert taken.read_bytes() == b"an earlier video"


def test_errors_sent_to_the_page_hold_no_server_path(server, monkeypatch, caplog):
    secret = str(server["out"] / "private")

    def fail(out_dir, stem):
        raise FileExistsError(17, "File exists", secret)

    monkeypatch.setattr("flex.serve.session.reserve_name", fail)
    with connect(server) as ws:
        send(ws, type="start", prompt="a cat runs on the beach")
        until(ws, "chunk")
        send(ws, type="stop")
        until(ws, "stopped")
        send(ws, type="save")
        error = receive(ws)
    wait_released(server)
    assert error["type"] == "error" and "save failed" in error["message"]
    assert secret not in error["message"] and str(server["out"]) not in error["message"]
    assert secret in caplog.text  # the log keeps the detail


def test_stale_temporary_videos_are_removed_at_start(server, tmp_path):
    engine = server["app"].state.engine
    stale = tmp_path / ".flex-20250101-000000-seed0.mp4.a1b2c3.part"
    other = tmp_path / ".notes.txt.a1b2c3.part"
    for f in (stale, other):
        f.write_bytes(b"x")
    out_dir = engine.out_dir
    try:
        engine.out_dir = tmp_path
        create_app(engine)
    finally:
        engine.out_dir = out_dir
    assert not stale.exists() and other.exists()


# ---------------------------------------------------------------- soak


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _flood_cycle(server, i):
    sock, status = handshake(server["port"], server["token"])
    assert status == 101
    for _ in range(20):
        sock.sendall(frame('{"type": "fly"}'))
    if i % 2:
        sock.sendall(frame(b"\x03\xe8", opcode=8))  # a clean close
    else:
        sock.shutdown(socket.SHUT_RDWR)  # or none
    sock.close()
    wait_released(server)


def test_soak_connect_flood_disconnect(server):
    for i in range(20):  # warm-up: pools and lazily created objects exist before the baseline
        _flood_cycle(server, i)
    threads, rss = threading.active_count(), _rss_bytes()
    for i in range(300):
        _flood_cycle(server, i)
    assert threading.active_count() == threads
    assert _rss_bytes() - rss < 32 << 20, "resident memory grew by more than 32 MiB over 300 cycles"


# ---------------------------------------------------------------- idle TCP connections


def test_connection_without_a_request_head_is_closed(server, monkeypatch):
    monkeypatch.setattr("flex.serve.connections.HEAD_TIMEOUT_S", 0.2)
    sock = socket.create_connection(("127.0.0.1", server["port"]), timeout=60)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line that ends it
    assert sock.recv(1024) == b""  # closed by the server
    sock.close()
    with connect(server) as ws:  # an upgraded connection is not timed out by it
        threading.Event().wait(0.5)
        send(ws, type="stop")
        assert "no stream is running" in receive(ws)["message"]
    wait_released(server)


def test_open_connections_are_capped(server, monkeypatch):
    monkeypatch.setattr("flex.serve.connections.MAX_CONNECTIONS", 3)
    socks = [socket.create_connection(("127.0.0.1", server["port"]), timeout=60) for _ in range(5)]
    try:
        assert socks[-1].recv(1024) == b""  # beyond the cap: closed at once
        socks[0].sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server['port']}\r\n\r\n".encode())
        assert socks[0].recv(1024).startswith(b"HTTP/1.1 200")  # within it: served
    finally:
        for s in socks:
            s.close()
