"""The page ``flex serve`` shows (kept in Python so that it ships with the package as is).

Its script is kept apart (``SCRIPT``): the Content-Security-Policy lets exactly that script run
(by its hash, see :func:`flex.serve.access.page_headers`); the page opens the WebSocket with the
token of its own address (``/?token=...``).
"""

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const state = { fps: 16, queue: [], frames: 0, shown: 0, running: false, url: null };
let socket = null;

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}
function logLine(text) {
  const log = $("log");
  log.textContent = (new Date()).toLocaleTimeString() + "  " + text + "\n" + log.textContent;
}
function setRunning(running, canSave) {
  state.running = running;
  $("start").disabled = false;
  $("start").textContent = running ? "Restart" : "Start";
  $("switch").disabled = !running;
  $("stop").disabled = !running;
  $("save").disabled = running || !canSave;
}
function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

// Frames are played back at the video's frame rate, in the order they were decoded.
function showNextFrame() {
  const blob = state.queue.shift();
  if (!blob) return;
  const url = URL.createObjectURL(blob);
  $("video").src = url;
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = url;
  state.shown += 1;
  $("shown").textContent = state.shown;
}

function offerPrompts(prompts) {
  if (prompts.length > 0) $("prompt").value = prompts[0];
  if (prompts.length < 2) return;
  const menu = $("prompts");
  for (const text of prompts) menu.add(new Option(text, text));
  menu.hidden = false;
  menu.onchange = () => { $("prompt").value = menu.value; };
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      state.fps = msg.fps;
      setInterval(showNextFrame, 1000 / msg.fps);
      offerPrompts(msg.prompts);
      setRunning(false, false);
      setStatus(`ready: ${msg.width}x${msg.height}, up to ${msg.seconds} s per stream, on ${msg.device}`);
      break;
    case "busy":
      setStatus(msg.message, true);
      break;
    case "started":
      state.queue = []; state.frames = 0; state.shown = 0;
      setRunning(true, false);
      setStatus(`streaming "${msg.prompt}" (seed ${msg.seed})`);
      logLine(`started: ${msg.prompt}`);
      break;
    case "chunk":
      state.frames = msg.frames;
      $("frames").textContent = msg.frames;
      $("latent-fps").textContent = msg.latent_fps.toFixed(2);
      $("decoded-fps").textContent = msg.decoded_fps.toFixed(2);
      break;
    case "switched":
      setStatus(`streaming "${msg.prompt}"`);
      logLine(`switched at frame ${msg.at_frame} (${msg.mode}): ${msg.prompt}`);
      break;
    case "stopped":
      setRunning(false, msg.frames > 0);
      setStatus(`${msg.reason}: ${msg.frames} frames in ${msg.seconds} s`);
      logLine(`stopped (${msg.reason}) after ${msg.frames} frames`);
      break;
    case "saved":
      $("save").disabled = true;
      setStatus(`saved ${msg.file} (${msg.frames} frames)`);
      logLine(`saved ${msg.file}`);
      break;
    case "error":
      setStatus(msg.message, true);
      logLine("error: " + msg.message);
      break;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const token = new URLSearchParams(location.search).get("token") || "";
  socket = new WebSocket(scheme + location.host + "/ws?token=" + encodeURIComponent(token));
  socket.binaryType = "blob";
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else state.queue.push(event.data);
  };
  socket.onclose = (event) => {
    for (const id of ["start", "switch", "stop", "save"]) $(id).disabled = true;
    const why = event.reason ? `: ${event.reason}` : "";
    if (event.code !== 1013) setStatus(`disconnected (code ${event.code}${why}); reload the page to reconnect`, true);
  };
}

$("start").onclick = () => send({ type: "start", prompt: $("prompt").value, seed: Number($("seed").value) || 0 });
$("switch").onclick = () => send({ type: "switch", prompt: $("prompt").value, ...($("mode").value ? { mode: $("mode").value } : {}) });
$("stop").onclick = () => send({ type: "stop" });
$("save").onclick = () => send({ type: "save" });
connect();
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>FLEX live</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #14161a; color: #e8e8e8; }
  main { max-width: 720px; margin: 0 auto; padding: 16px; }
  h1 { font-size: 20px; margin: 0 0 12px; }
  #screen { width: 100%; aspect-ratio: 832 / 480; background: #000; display: flex;
            align-items: center; justify-content: center; border-radius: 6px; overflow: hidden; }
  #video { width: 100%; height: 100%; object-fit: contain; image-rendering: auto; }
  #stats { display: flex; gap: 24px; margin: 10px 0; font-variant-numeric: tabular-nums; }
  #stats b { color: #7fd1ff; }
  select { width: 100%; margin-bottom: 6px; background: #1f2228; color: inherit; border: 1px solid #3a3f48; padding: 4px; }
  textarea { width: 100%; box-sizing: border-box; height: 56px; background: #1f2228; color: inherit;
             border: 1px solid #3a3f48; border-radius: 4px; padding: 6px; font: inherit; }
  .row { display: flex; gap: 8px; align-items: center; margin: 8px 0; }
  button { background: #2d6cdf; color: #fff; border: 0; border-radius: 4px; padding: 7px 14px; font: inherit; }
  button:disabled { background: #3a3f48; color: #888; }
  input[type=number] { width: 90px; background: #1f2228; color: inherit; border: 1px solid #3a3f48; padding: 4px; }
  #status { color: #c9c9c9; } #status.error { color: #ff8a80; }
  #log { font-size: 12px; color: #9aa0a6; max-height: 120px; overflow-y: auto; white-space: pre-wrap; }
</style>
</head>
<body>
<main>
  <h1>FLEX live stream</h1>
  <div id="screen"><img id="video" alt=""></div>
  <div id="stats">
    <span>latent FPS <b id="latent-fps">-</b></span>
    <span>decoded FPS <b id="decoded-fps">-</b></span>
    <span>frames <b id="frames">0</b></span>
    <span>shown <b id="shown">0</b></span>
  </div>
  <select id="prompts" hidden></select>
  <textarea id="prompt" maxlength="2000">a red fox runs through fresh snow, cinematic, golden hour</textarea>
  <div class="row">
    <button id="start" disabled>Start</button>
    <button id="switch" disabled>Switch prompt</button>
    <select id="mode" title="what the switch does to the cache (window, all, none, longlive; flush: KV Flush, a fast action change; cut: RoPE Cut, a new shot)">
      <option value="">default</option><option>window</option><option>all</option><option>none</option>
      <option>longlive</option><option value="flush">flush (action)</option><option value="cut">cut (new shot)</option>
    </select>
    <button id="stop" disabled>Stop</button>
    <button id="save" disabled>Save video</button>
    <label>seed <input id="seed" type="number" value="0" min="0"></label>
  </div>
  <div class="row"><span id="status">connecting...</span></div>
  <div id="log"></div>
</main>
<script>""" + SCRIPT + r"""</script>
</body>
</html>
"""
