"""The operator console: one person supervising the fleet from a web page (on loopback unless
configured), as the paper's real-robot runs had a human ready to intervene.

It shows each actor live (policy version, step of its first environment's episode, the
d(o, g) curve of that episode, detected success, episodes in flight), the round in progress
and success per round; its buttons end the running episodes of one actor or of all (the
episode loop's external stop, in every runtime) and pause or resume the fleet (no new episode
starts while paused; running ones finish). It reads and writes only the fleet's monitor.

  GET  /              the page (self-contained, polls /api/state)
  GET  /api/state     the monitor's snapshot as JSON
  POST /api/stop      {"actor": i} or {} for every actor
  POST /api/pause     {"paused": true | false}
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


class MonitorView(Protocol):
    def snapshot(self) -> dict[str, Any]: ...

    def request_stop(self, actor: int | None = None) -> None: ...

    def set_paused(self, paused: bool) -> None: ...


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>efm fleet</title>
<style>
body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}
.ok{color:#070}.no{color:#a00}button{margin:2px}
</style></head><body>
<h1>Self-Improvement fleet</h1>
<p>Round <b id="round">-</b> &middot; <span id="state">-</span>
<button id="pause">Pause fleet</button><button id="resume">Resume fleet</button>
<button id="stop-all">End all episodes</button></p>
<h2>Actors</h2>
<table id="actors"><thead><tr><th>actor</th><th>policy version</th><th>step</th><th>d(o,g)</th>
<th>curve</th><th>detected success</th><th>in flight</th><th></th></tr></thead><tbody></tbody></table>
<h2>Rounds</h2>
<table id="rounds"><thead><tr><th>round</th><th>episodes</th><th>detected success</th>
<th>mean length</th><th>updates</th></tr></thead><tbody></tbody></table>
<script>
function post(path, body){return fetch(path,{method:"POST",headers:{"Content-Type":"application/json"},body:JSON.stringify(body)}).then(refresh);}
function curve(points){
  if(!points||points.length<2)return "";
  const w=160,h=40,max=Math.max(...points,1);
  const xy=points.map((v,i)=>`${(i*w/(points.length-1)).toFixed(1)},${(h-v*h/max).toFixed(1)}`).join(" ");
  return `<svg width="${w}" height="${h}"><polyline fill="none" stroke="#06c" points="${xy}"/></svg>`;
}
function fmt(v,d){return v===null||v===undefined?"-":Number(v).toFixed(d);}
let last="";
function refresh(){
  return fetch("/api/state").then(r=>r.text()).then(text=>{
    if(text===last)return;  // unchanged: keep the DOM (and the buttons under the cursor)
    last=text;const s=JSON.parse(text);
    document.getElementById("round").textContent=s.round;
    document.getElementById("state").textContent=s.paused?"paused":"running";
    document.querySelector("#actors tbody").innerHTML=Object.entries(s.actors).map(([i,a])=>
      `<tr data-actor="${i}"><td>${i}</td><td class="version">${a.policy_version}</td><td>${a.step}</td>`+
      `<td>${fmt(a.steps_to_go,2)}</td><td>${curve(a.steps_to_go_curve)}</td>`+
      `<td class="${a.detected?"ok":"no"}">${a.detected?"yes":"no"}</td><td>${a.in_flight}</td>`+
      `<td><button class="stop" onclick="post('/api/stop',{actor:${i}})">End episodes</button></td></tr>`).join("");
    document.querySelector("#rounds tbody").innerHTML=s.rounds.map(r=>
      `<tr><td>${r.round}</td><td>${r.episodes}</td><td>${fmt(r.success_rate,2)}</td>`+
      `<td>${fmt(r.mean_episode_length,1)}</td><td>${r.updates}</td></tr>`).join("");
  });
}
document.getElementById("pause").onclick=()=>post("/api/pause",{paused:true});
document.getElementById("resume").onclick=()=>post("/api/pause",{paused:false});
document.getElementById("stop-all").onclick=()=>post("/api/stop",{});
refresh();setInterval(refresh,500);
</script></body></html>
"""


def _handler(view: MonitorView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path == "/api/state":
                self._send(200, json.dumps(view.snapshot()).encode(), "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except json.JSONDecodeError:
                self._send(400, b"body must be JSON", "text/plain")
                return
            if self.path == "/api/stop":
                actor = body.get("actor")
                view.request_stop(None if actor is None else int(actor))
            elif self.path == "/api/pause":
                view.set_paused(bool(body.get("paused", True)))
            else:
                self._send(404, b"not found", "text/plain")
                return
            self._send(200, json.dumps(view.snapshot()).encode(), "application/json")

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    return Handler


class Console:
    """The console's HTTP server on a daemon thread; `url` once started, `close()` to stop."""

    def __init__(self, view: MonitorView, host: str = "127.0.0.1", port: int = 0):
        self._server = ThreadingHTTPServer((host, port), _handler(view))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="efm-console", daemon=True)
        self._thread.start()
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
