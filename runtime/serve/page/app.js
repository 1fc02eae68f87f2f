// The chat page of `tcc serve`: streams /v1/chat/completions, shows tokens/s, can stop a reply and
// keeps the conversation (sent whole each turn; the server's prompt cache evaluates only the new turn).
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
let controller = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value || localStorage.getItem("tcc-api-key") || "";
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    $("model").textContent = r.ok ? j.data[0].id + " (context " + j.data[0].meta.n_ctx + ")" : j.error.message;
  } catch (e) { $("model").textContent = "server unreachable"; }
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

// Read server-sent events from a fetch body: calls onData with each parsed `data:` payload.
async function readSSE(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  const messages = [];
  if ($("system").value) messages.push({ role: "system", content: $("system").value });
  messages.push(...history);
  const req = { messages, stream: true, stream_options: { include_usage: true },
                max_tokens: Number($("max_tokens").value) || 256, temperature: Number($("temperature").value) };
  controller = new AbortController();
  busy(true);
  let reply = "", t0 = 0, n = 0;
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(req),
                                                    signal: controller.signal });
    if (!r.ok) {
      const j = await r.json().catch(() => ({ error: { message: r.statusText } }));
      throw new Error(j.error.message);
    }
    await readSSE(r.body, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (!t0) t0 = performance.now();
        n += 1;
        reply += delta.content;
        out.textContent = reply;
        const s = (performance.now() - t0) / 1000;
        if (s > 0) $("speed").textContent = (n / s).toFixed(1) + " tokens/s";
        $("log").scrollTop = $("log").scrollHeight;
      }
      if (chunk.usage) $("speed").textContent += " · " + chunk.usage.completion_tokens + " tokens";
    });
  } catch (e) {
    if (e.name === "AbortError") out.classList.add("stopped");
    else { out.classList.add("error"); out.textContent = reply + (reply ? "\n" : "") + "error: " + e.message; }
  }
  history.push({ role: "assistant", content: reply });
  controller = null;
  busy(false);
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("form").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("reset").addEventListener("click", () => { history.length = 0; $("log").textContent = ""; $("speed").textContent = ""; });
$("apikey").addEventListener("change", () => { localStorage.setItem("tcc-api-key", $("apikey").value); loadModel(); });
loadModel();
