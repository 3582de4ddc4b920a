#include "cli/serve_page.h"

namespace moe::cli {

std::string_view serve_page_html() {
  static constexpr std::string_view kPage = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moe serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:860px;padding:16px;color:#222}
h1{font-size:18px;margin:0 0 8px}#meta{color:#666;font-size:13px}
textarea{width:100%;box-sizing:border-box;height:70px;font:inherit}
#out{white-space:pre-wrap;border:1px solid #ccc;border-radius:4px;min-height:120px;padding:8px;margin-top:8px}
.tok{border-radius:2px}#bars{margin-top:12px}.bar{display:flex;align-items:center;gap:6px;font-size:12px}
.bar i{display:inline-block;height:10px;border-radius:2px}.row{display:flex;gap:8px;align-items:center;margin-top:6px}
</style></head><body>
<h1>moe serve</h1><div id="meta">loading…</div>
<textarea id="prompt" placeholder="Type a prompt"></textarea>
<div class="row"><button id="send">Send</button>
<label>layer <select id="layer"></select></label>
<label>max tokens <input id="max" type="number" value="64" min="1" style="width:5em"></label>
<label>API key <input id="key" type="password" style="width:8em"></label></div>
<div id="out"></div><div id="bars"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let model = null, layers = [], chat = false;
// One colour per expert, spread around the hue circle.
const colour = (e) => `hsl(${(e * 137.5) % 360} 70% 80%)`;
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h.Authorization = "Bearer " + $("key").value;
  return h;
}
async function init() {
  const r = await fetch("/v1/models", {headers: headers()});
  if (!r.ok) { $("meta").textContent = "GET /v1/models: " + r.status + " (API key?)"; return; }
  model = (await r.json()).data[0];
  chat = model.chat_template !== "none";
  $("meta").textContent = `${model.id}: context ${model.context}, ` +
      (chat ? `chat template ${model.chat_template}` : "completions only");
}
function setLayers(list) {
  if (layers.length) return;
  layers = list;
  for (const l of layers) {
    const o = document.createElement("option"); o.value = o.textContent = l; $("layer").append(o);
  }
}
async function send() {
  $("out").textContent = "";
  const body = {model: model.id, stream: true, max_tokens: Number($("max").value), moe: {routes: true}};
  if (chat) body.messages = [{role: "user", content: $("prompt").value}];
  else body.prompt = $("prompt").value;
  const r = await fetch(chat ? "/v1/chat/completions" : "/v1/completions",
                        {method: "POST", headers: headers(), body: JSON.stringify(body)});
  if (!r.ok) { $("out").textContent = "error " + r.status + ": " + (await r.text()); return; }
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      show(JSON.parse(event.slice(6)));
    }
  }
}
// A chunk's text, token by token where the routes name them, coloured by the chosen layer.
function show(chunk) {
  if (chunk.error) { $("out").append(" [" + chunk.error.message + "]"); return; }
  if (!chunk.moe) return;
  setLayers(chunk.moe.layers);
  const m = Math.max(0, layers.indexOf(Number($("layer").value)));
  for (const t of chunk.moe.tokens) {
    const span = document.createElement("span");
    span.className = "tok";
    const experts = t.experts[m] || [];
    span.dataset.expert = experts.join(",");
    if (experts.length) span.style.background = colour(experts[0]);
    span.title = "layer " + layers[m] + ": experts " + experts.join(", ");
    span.textContent = t.text;
    $("out").append(span);
  }
}
// Per-expert load of the chosen layer over the last minute, from /metrics.
async function bars() {
  try {
    const text = await (await fetch("/metrics")).text();
    const layer = $("layer").value;
    const load = [];
    for (const line of text.split("\n")) {
      const m = line.match(/^moe_expert_load_last_minute\{layer="(\d+)",expert="(\d+)"\} (\S+)/);
      if (m && (layer === "" || m[1] === layer)) load[Number(m[2])] = (load[Number(m[2])] || 0) + Number(m[3]);
    }
    const top = Math.max(1, ...load.filter((x) => x !== undefined));
    $("bars").replaceChildren(...load.map((v, e) => {
      const row = document.createElement("div"); row.className = "bar";
      const bar = document.createElement("i");
      bar.style.width = (4 + 300 * v / top) + "px"; bar.style.background = colour(e);
      row.append(bar, `expert ${e}: ${v}`);
      return row;
    }));
  } catch (e) { /* the server went away: try again at the next tick */ }
}
$("send").addEventListener("click", () => send().catch((e) => { $("out").textContent = String(e); }));
init().then(bars);
setInterval(bars, 1000);
</script></body></html>
)HTML";
  return kPage;
}

}  // namespace moe::cli
