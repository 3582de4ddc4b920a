#include "cli/serve_page.h"

namespace moe::cli {

// The page's hooks, which tests/e2e/serve_page.py reads: body[data-state] is "ready", "busy"
// (an answer streaming) or "error"; each answer is a .answer of span.tok, each with data-experts
// (JSON: per MoE layer, the experts of its tokens' first token) and data-expert (the colouring
// expert in the chosen layer); each load bar row is a .bar with data-expert.
constexpr std::string_view kServePage = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moe serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:860px;padding:16px;color:#222}
h1{font-size:18px;margin:0 0 4px}#meta,#note{color:#666;font-size:13px}
textarea{width:100%;box-sizing:border-box;height:64px;font:inherit;margin-top:8px}
#log{border:1px solid #ccc;border-radius:4px;min-height:90px;padding:8px;margin-top:8px}
.turn{white-space:pre-wrap;margin-bottom:8px}.user{color:#777}.err{color:#b00}
.tok{border-radius:2px;border-bottom:4px solid transparent}
.row{display:flex;gap:8px;align-items:center;margin-top:6px;font-size:13px;flex-wrap:wrap}
#bars{margin-top:10px}.bar{display:flex;align-items:center;gap:6px;font-size:12px;height:16px}
.bar i{display:inline-block;height:11px;border-radius:2px;transition:width .3s}
.bar b{display:inline-block;width:6em;font-weight:normal}h2{font-size:14px;margin:12px 0 2px}
</style></head><body data-state="loading">
<h1>moe serve</h1><div id="meta">loading…</div>
<div id="log"></div>
<div id="note">A token's background is the first expert it used in the chosen layer, its underline
the second; hover for all.</div>
<form id="form"><textarea id="prompt" placeholder="Type a prompt (Enter sends, Shift+Enter a new line)"></textarea>
<div class="row"><button id="send">Send</button><button id="clear" type="button">Clear</button>
<label>colour by layer <select id="layer"></select></label>
<label>max tokens <input id="max" type="number" value="64" min="1" style="width:4em"></label>
<label>temperature <input id="temp" type="number" value="0.8" min="0" max="2" step="0.1"
 style="width:3.5em"></label>
<label>seed <input id="seed" type="number" placeholder="random" style="width:4.5em"></label>
<label>API key <input id="key" type="password" autocomplete="off" style="width:6em"></label>
</div></form>
<h2>Expert load in this layer, last minute (this answer)</h2><div id="bars"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let model = null, chat = false, layers = [], history = [], spans = [], answerLoad = [];
let controller = null;
// One colour per expert, spread around the hue circle.
const colour = (e) => `hsl(${(e * 137.508) % 360} 70% 78%)`;
const state = (s) => { document.body.dataset.state = s; };
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h.Authorization = "Bearer " + $("key").value;
  return h;
}
// The model (GET /v1/models): its id, context and chat template ("none": completions only).
async function init() {
  const r = await fetch("/v1/models", {headers: headers()});
  if (!r.ok) {
    $("meta").textContent = "GET /v1/models: " + r.status + (r.status === 401 ? " (API key?)" : "");
    return false;
  }
  model = (await r.json()).data[0];
  chat = model.chat_template !== "none";
  showMeta("");
  return true;
}
function showMeta(extra) {
  if (!model) return;
  $("meta").textContent = `${model.id}: context ${model.context}, ` +
      (chat ? `chat template ${model.chat_template}` : "completions only (no chat template)") + extra;
}
function setLayers(list) {
  if (layers.length || !list.length) return;
  layers = list;
  for (const l of layers) {
    const o = document.createElement("option"); o.value = o.textContent = l; $("layer").append(o);
  }
}
const layerIndex = () => Math.max(0, layers.indexOf(Number($("layer").value)));
// A span's colours in the chosen layer: the first expert as background, the second underlined.
function paint(s) {
  const experts = JSON.parse(s.dataset.experts)[layerIndex()] || [];
  s.dataset.expert = experts.length ? experts[0] : "";
  s.style.background = experts.length ? colour(experts[0]) : "";
  s.style.borderBottomColor = experts.length > 1 ? colour(experts[1]) : "transparent";
  s.title = experts.length ? `layer ${layers[layerIndex()]}: experts ${experts.join(", ")}` : "";
}
function countLoad() {
  answerLoad = [];
  const m = layerIndex();
  for (const s of spans)
    for (const t of JSON.parse(s.dataset.tokens))
      for (const e of t[m] || []) answerLoad[e] = (answerLoad[e] || 0) + 1;
}
$("layer").addEventListener("change", () => { spans.forEach(paint); countLoad(); bars(); });

// The answer's text is what the chunks' text says (decoded with the tokens before it, stop
// strings cut, incomplete characters held back); each token's route is placed on the part of
// that text its piece matches. A piece that is not the text's next characters (byte pieces, a
// partial character) shares the text up to where the next matching piece starts.
class Answer {
  constructor(element) { this.el = element; this.rest = ""; this.queue = []; }
  add(text, tokens) {
    this.rest += text;
    // SentencePiece's byte pieces (<0x41>): an ASCII byte is its character.
    const ascii = (m, hex) => (parseInt(hex, 16) < 128 ? String.fromCharCode(parseInt(hex, 16)) : m);
    for (const t of tokens) this.queue.push({...t, text: t.text.replace(/^<0x([0-9A-F]{2})>$/, ascii)});
    this.place(false);
  }
  place(final) {
    while (this.queue.length) {
      const piece = this.queue[0].text;
      if (piece && this.rest.startsWith(piece)) {
        this.emit(piece, this.queue.splice(0, 1));
        continue;
      }
      if (!this.rest) break;  // its text has not come (held back, or cut by a stop string)
      let j = 1, at = -1;
      for (; j < this.queue.length; ++j)
        if (this.queue[j].text && (at = this.rest.indexOf(this.queue[j].text)) >= 0) break;
      if (at < 0) {
        if (!final) break;
        j = this.queue.length; at = this.rest.length;
      }
      if (at > 0) this.emit(this.rest.slice(0, at), this.queue.splice(0, j));
      else this.queue.splice(0, j);  // tokens that gave no text of their own
    }
    if (final) {
      if (this.rest) this.emit(this.rest, []);
      this.queue = [];
    }
  }
  emit(text, tokens) {
    this.rest = this.rest.slice(text.length);
    if (!tokens.length) { this.el.append(text); return; }
    const s = document.createElement("span");
    s.className = "tok";
    s.textContent = text;
    s.dataset.tokens = JSON.stringify(tokens.map((t) => t.experts));
    s.dataset.experts = JSON.stringify(tokens[0].experts);
    paint(s);
    spans.push(s);
    const m = layerIndex();
    for (const t of tokens) for (const e of t.experts[m] || []) answerLoad[e] = (answerLoad[e] || 0) + 1;
    this.el.append(s);
  }
}

async function post(useChat, prompt, signal) {
  const body = {model: model.id, stream: true, max_tokens: Number($("max").value),
                temperature: Number($("temp").value), moe: {routes: true}};
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (useChat) body.messages = [...history, {role: "user", content: prompt}];
  else body.prompt = prompt;
  return fetch(useChat ? "/v1/chat/completions" : "/v1/completions",
               {method: "POST", headers: headers(), body: JSON.stringify(body), signal});
}

async function send() {
  const prompt = $("prompt").value;
  if (!model && !(await init())) return;
  const turn = document.createElement("div"); turn.className = "turn";
  const user = document.createElement("span"); user.className = "user";
  user.textContent = chat ? "> " + prompt + "\n" : prompt;
  const out = document.createElement("span"); out.className = "answer";
  turn.append(user, out); $("log").append(turn);
  $("prompt").value = "";
  spans = []; answerLoad = [];
  controller = new AbortController();
  state("busy"); $("send").textContent = "Stop";
  let r = await post(chat, prompt, controller.signal);
  if (chat && r.status === 400) {  // a server without a chat template serves completions only
    const error = await r.json().catch(() => ({}));
    if (error.error && error.error.code === "no_chat_template") {
      chat = false; showMeta("");
      user.textContent = prompt;
      r = await post(false, prompt, controller.signal);
    } else {
      throw new Error("400: " + (error.error ? error.error.message : "bad request"));
    }
  }
  if (!r.ok) throw new Error(r.status + ": " + (await r.text()));
  const answer = new Answer(out), reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "", failed = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const chunk = JSON.parse(event.slice(6));
      if (chunk.error) { failed = chunk.error.message; continue; }
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const text = (chat ? choice.delta && choice.delta.content : choice.text) || "";
      if (chunk.moe) setLayers(chunk.moe.layers);
      answer.add(text, chunk.moe ? chunk.moe.tokens : []);
    }
    bars();
  }
  answer.place(true);
  if (chat) history.push({role: "user", content: prompt}, {role: "assistant", content: out.textContent});
  if (failed) throw new Error(failed);
}
function finish(e) {
  controller = null;
  $("send").textContent = "Send";
  if (e && e.name !== "AbortError") {
    const p = document.createElement("div"); p.className = "err"; p.textContent = String(e.message || e);
    $("log").append(p);
    state("error");
  } else {
    state("ready");
  }
  bars();
}
function go() {
  if (controller) { controller.abort(); return; }
  send().then(() => finish(null), finish);
}
// Send (Stop while an answer streams), or Enter in a field when none is streaming.
$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (e.submitter === $("send") || !controller) go();
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!controller) go();
  }
});
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  $("log").replaceChildren(); history = []; spans = []; answerLoad = []; bars();
});
$("key").addEventListener("change", () => { model = null; init(); });

// The chosen layer's per-expert load over the last minute (GET /metrics), the answer's own in
// brackets. The layers come from there too, before any answer.
let polling = false;
async function bars() {
  if (polling) return;
  polling = true;
  try {
    const text = await (await fetch("/metrics")).text();
    const load = new Map(), tps = text.match(/^moe_tokens_per_second (\S+)/m);
    for (const line of text.split("\n")) {
      const m = line.match(/^moe_expert_load_last_minute\{layer="(\d+)",expert="(\d+)"\} (\S+)/);
      if (!m) continue;
      if (!load.has(m[1])) load.set(m[1], []);
      load.get(m[1])[Number(m[2])] = Number(m[3]);
    }
    setLayers([...load.keys()].map(Number));
    if (tps) showMeta(`, ${Number(tps[1]).toFixed(1)} tokens/s`);
    const row = load.get($("layer").value) || [];
    const top = Math.max(1, ...row);
    $("bars").replaceChildren(...row.map((v, e) => {
      const div = document.createElement("div"); div.className = "bar"; div.dataset.expert = e;
      const name = document.createElement("b"); name.textContent = "expert " + e;
      const bar = document.createElement("i");
      bar.style.width = (3 + 300 * v / top) + "px"; bar.style.background = colour(e);
      div.append(name, bar, `${v} (${answerLoad[e] || 0})`);
      return div;
    }));
    if (!load.size) $("bars").textContent = "no MoE layers";
  } catch (e) {
    /* the server went away: try again at the next tick */
  } finally {
    polling = false;
  }
}
init().then(() => { bars(); state("ready"); }, () => state("ready"));
setInterval(bars, 1000);
</script></body></html>
)HTML";

}  // namespace moe::cli
