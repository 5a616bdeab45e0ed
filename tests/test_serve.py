"""``flex serve`` over real WebSockets on the tiny random model: streaming, prompt switches,
stop / save, the one-user rule, bad requests and 50 connect / disconnect cycles."""
import argparse
import contextlib
import gc
import io
import json
import socket
import threading
import time
import tracemalloc

import pytest
import websockets.sync.client as websockets_sync
from PIL import Image

from tiny_assets import make_dit_checkpoint, make_wan_dir
from flex.cli.common import CliError
from flex.cli import serve as serve_cli
from flex.serve.protocol import MAX_MESSAGE_BYTES, MAX_PROMPT_CHARS, RequestError, parse_command
from flex.video import read_video

HEIGHT, WIDTH = 64, 96


def serve_args(assets, out_dir, *extra):
    """Parsed ``flex serve`` arguments for the tiny model on the CPU, any free port."""
    parser = argparse.ArgumentParser(prog="flex")
    serve_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]),
                              "--height", str(HEIGHT), "--width", str(WIDTH), "--dtype", "fp32", "--device", "cpu",
                              "--port", "0", "--out", str(out_dir), *extra])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-assets")
    return {"wan": make_wan_dir(root / "wan"), "dit": make_dit_checkpoint(root / "tiny.pt")}


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("serve-out")
    with serve_cli.serve_in_thread(serve_args(assets, out, "--frames", "30")) as (url, app):
        yield {"ws": ws_url(url, app), "out": out, "app": app}


def ws_url(url, app):
    """The WebSocket address of a server whose page is at ``url`` (``http://host:port/?token=...``)."""
    return url.split("/?")[0].replace("http://", "ws://") + "/ws?token=" + app.state.access.token


@contextlib.contextmanager
def connect(server):
    with websockets_sync.connect(server["ws"], max_size=None) as ws:
        hello = receive(ws)
        assert hello["type"] == "hello", hello
        yield ws


def receive(ws, timeout=60):
    """The next JSON message (frames in between are skipped)."""
    while True:
        message = ws.recv(timeout=timeout)
        if isinstance(message, str):
            return json.loads(message)


def until(ws, kind, frames=None):
    """Messages up to the first of type ``kind``; JPEG frames are appended to ``frames``."""
    while True:
        message = ws.recv(timeout=60)
        if isinstance(message, bytes):
            if frames is not None:
                frames.append(message)
            continue
        message = json.loads(message)
        if message["type"] == kind:
            return message
        assert message["type"] != "error", message


def wait_released(server):
    """Poll until no connection owns the model (the last handler has finished)."""
    deadline = time.monotonic() + 60
    while server["app"].state.owner["session"] is not None:
        assert time.monotonic() < deadline, "the model was never released"
        time.sleep(0.02)


def send(ws, **message):
    ws.send(json.dumps(message))


# ---------------------------------------------------------------- the protocol


@pytest.mark.parametrize("text, message", [
    ("{bad", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"type": "dance"}', "type must be one of"),
    ('{"prompt": "x"}', "type must be one of"),
    ('{"type": "start"}', "prompt must be a string"),
    ('{"type": "start", "prompt": "   "}', "prompt is empty"),
    ('{"type": "start", "prompt": "' + "a" * (MAX_PROMPT_CHARS + 1) + '"}', f"at most {MAX_PROMPT_CHARS}"),
    ('{"type": "start", "prompt": "a cat", "seed": -1}', "seed must be an integer"),
    ('{"type": "start", "prompt": "a cat", "seed": 1.5}', "seed must be an integer"),
    ('{"type": "stop", "now": true}', "unknown field(s) ['now']"),
    ('{"type": "switch", "prompt": "a cat", "mode": "sink"}', "mode must be one of"),
    ('{"type": "start", "prompt": "a cat", "mode": "cut"}', "unknown field(s) ['mode']"),
])
def test_bad_messages_are_named(text, message):
    with pytest.raises(RequestError, match=None) as err:
        parse_command(text)
    assert message in str(err.value)


def test_good_messages():
    cmd = parse_command('{"type": "start", "prompt": " a cat ", "seed": 7}')
    assert (cmd.type, cmd.prompt, cmd.seed) == ("start", "a cat", 7)
    assert parse_command('{"type": "stop"}').type == "stop"
    assert parse_command('{"type": "switch", "prompt": "a dog", "mode": "cut"}').mode == "cut"
    assert parse_command('{"type": "switch", "prompt": "a dog"}').mode is None


def test_bad_serve_arguments(assets, tmp_path):
    with pytest.raises(CliError, match="--out must be a folder"):
        serve_cli.check_args(serve_args(assets, tmp_path / "video.mp4"))
    with pytest.raises(CliError, match="--port must be in"):
        serve_cli.check_args(serve_args(assets, tmp_path, "--port", "70000"))
    with pytest.raises(CliError, match="--height must be"):
        serve_cli.check_args(serve_args(assets, tmp_path, "--height", "50"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(CliError, match="cannot listen"):
            serve_cli.run(serve_args(assets, tmp_path, "--port", str(taken.getsockname()[1])))
    finally:
        taken.close()


def test_no_flex_keeps_the_typed_flags(assets, tmp_path):
    """--no-flex with flex.cli's typed-option set (SUPPRESS defaults), and without it."""
    argv = ["serve", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]), "--no-flex", "--sink-frames", "3"]
    typed = argparse.ArgumentParser(prog="flex", argument_default=argparse.SUPPRESS)
    serve_cli.add_parser(typed.add_subparsers(dest="command"), defaults=False)
    explicit = set(vars(typed.parse_known_args(argv)[0]))
    assert "sink_frames" in explicit and "rope" not in explicit
    args = serve_args(assets, tmp_path, "--no-flex", "--sink-frames", "3")
    settings = serve_cli.check_args(args, explicit)
    assert (settings.flex.sink_frames, settings.flex.strategy, settings.flex.rho) == (3, "none", 0.0)
    assert serve_cli.check_args(serve_args(assets, tmp_path, "--no-flex")).flex.sink_frames == 0
    assert settings.prompts == (serve_cli.DEFAULT_PROMPT,)


# ---------------------------------------------------------------- streaming


def test_stream_switch_stop_save(server):
    with connect(server) as ws:
        send(ws, type="start", prompt="a cat runs on the beach", seed=3)
        assert until(ws, "started")["seed"] == 3
        frames = []
        first = until(ws, "chunk", frames)
        assert first["index"] == 0 and first["frames"] == 9 and first["latent_frames"] == 3
        assert first["latent_fps"] > 0 and first["decoded_fps"] > 0
        send(ws, type="switch", prompt="a dog jumps in snow")
        switched = until(ws, "switched", frames)
        assert switched["prompt"] == "a dog jumps in snow" and switched["at_frame"] % 3 == 0
        send(ws, type="save")  # not while streaming
        assert "stop the stream first" in until(ws, "error", frames)["message"]
        send(ws, type="stop")
        stopped = until(ws, "stopped", frames)
        assert stopped["reason"] == "stopped" and 9 <= stopped["frames"] < 4 * 30 - 3
        assert len(frames) == stopped["frames"]
        image = Image.open(io.BytesIO(frames[-1]))
        assert image.format == "JPEG" and image.size == (WIDTH, HEIGHT)
        send(ws, type="save")
        saved = until(ws, "saved")
        assert saved["frames"] == stopped["frames"]
        video = read_video(server["out"] / saved["file"])
        assert video.shape == (stopped["frames"], HEIGHT, WIDTH, 3)
        send(ws, type="save")  # saved once: nothing left to save
        assert "no video to save" in receive(ws)["message"]
    wait_released(server)
    assert not list(server["out"].glob(".*.part")), "a temporary video was left behind"


def test_stream_runs_to_its_end_and_restarts(server):
    with connect(server) as ws:
        send(ws, type="start", prompt="a red car in the city at night")
        until(ws, "chunk")
        send(ws, type="start", prompt="a bird flies over the ocean", seed=1)  # restart
        assert until(ws, "stopped")["reason"] == "restarted"
        assert until(ws, "started")["prompt"] == "a bird flies over the ocean"
        done = until(ws, "stopped")
        assert done["reason"] == "finished" and done["frames"] == 4 * 30 - 3
    wait_released(server)


def test_second_connection_is_told_busy(server):
    with connect(server) as first:
        with websockets_sync.connect(server["ws"]) as second:
            busy = json.loads(second.recv(timeout=60))
            assert busy["type"] == "busy" and "another user" in busy["message"]
            with pytest.raises(Exception) as closed:
                second.recv(timeout=60)
            assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1013
        send(first, type="stop")  # the first connection is unaffected
        assert "no stream is running" in receive(first)["message"]
    wait_released(server)


def test_bad_requests_get_errors_and_the_server_keeps_running(server):
    with connect(server) as ws:
        for text, expected in [("{bad", "not valid JSON"), ('{"type": "fly"}', "type must be one of"),
                               (json.dumps({"type": "start", "prompt": "x" * 5000}), "at most"),
                               ('{"type": "switch", "prompt": "a cat"}', "no stream is running"),
                               ('{"type": "save"}', "no video to save")]:
            ws.send(text)
            message = receive(ws)
            assert message["type"] == "error" and expected in message["message"], (text[:40], message)
        ws.send(b"\x00\x01")
        assert "binary" in receive(ws)["message"]
    wait_released(server)
    with connect(server) as ws:  # larger than the WebSocket limit: that connection is closed (1009)
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(Exception) as closed:
            receive(ws)
        assert closed.value.rcvd.code == 1009
    wait_released(server)
    with connect(server) as ws:
        send(ws, type="start", prompt="a cat")
        until(ws, "chunk")
        ws.socket.shutdown(socket.SHUT_RDWR)  # abrupt: no closing handshake, mid-stream
    wait_released(server)
    with connect(server) as ws:  # still serving, and the model is free again
        send(ws, type="stop")
        assert "no stream is running" in receive(ws)["message"]
    wait_released(server)


def _session_threads():
    return [t for t in threading.enumerate() if t.name == "flex-serve-session"]


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _cycle(server, i):
    """Connect, start a stream, leave while it runs (every other time without a closing handshake)."""
    with connect(server) as ws:
        send(ws, type="start", prompt="a cat runs on the beach", seed=i)
        until(ws, "started")
        if i % 2:
            ws.socket.shutdown(socket.SHUT_RDWR)
    wait_released(server)


def test_fifty_connect_disconnect_cycles_leak_nothing(server):
    for i in range(3):  # warm-up: lazily created objects and pools exist before the baseline
        _cycle(server, i)
    threads, rss = threading.active_count(), _rss_bytes()
    for i in range(50):  # resident memory, measured without tracemalloc (whose own traces count in RSS)
        _cycle(server, i)
    assert _session_threads() == []
    assert threading.active_count() == threads
    assert _rss_bytes() - rss < 64 << 20, "resident memory grew by more than 64 MiB over 50 sessions"
    tracemalloc.start()
    try:
        gc.collect()  # count what is kept, not the closed connections' cycles awaiting the collector
        before = tracemalloc.take_snapshot()
        for i in range(50):
            _cycle(server, i)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert _session_threads() == []
    assert threading.active_count() == threads
    assert grown < 1 << 20, f"Python heap grew by {grown} bytes over 50 sessions"
    assert not list(server["out"].glob(".*.part")), "unsaved videos must be discarded"
