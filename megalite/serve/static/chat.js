// The chat page: keeps the conversation, streams each reply from /v1/chat/completions
// (server-sent events), and stops it on request. No build step, no outside resources.
"use strict";

const $ = (id) => document.getElementById(id);
const messages = [];  // the conversation so far, without the system prompt
let model = null;
let controller = null;

function show(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.appendChild(content);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("input").disabled = on;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function send(text) {
  showError("");
  messages.push({role: "user", content: text});
  show("user", text);
  const bubble = show("assistant", "");
  bubble.classList.add("streaming");
  const system = $("system").value.trim();
  const body = {
    model: model,
    messages: (system ? [{role: "system", content: system}] : []).concat(messages),
    temperature: parseFloat($("temperature").value),
    max_tokens: parseInt($("max-tokens").value, 10) || undefined,
    stream: true,
  };
  controller = new AbortController();
  busy(true);
  let reply = "";
  let finish = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        for (const choice of event.choices) {
          if (choice.delta && choice.delta.content) reply += choice.delta.content;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        bubble.firstChild.textContent = reply.trimStart();
        $("log").scrollTop = $("log").scrollHeight;
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      finish = "stopped";
    } else {
      showError("Error: " + e.message);
      finish = "error";
    }
  } finally {
    controller = null;
    bubble.classList.remove("streaming");
    busy(false);
    $("input").focus();
  }
  if (finish === "error" && !reply) {
    messages.pop();  // the failed turn is not part of the conversation
    bubble.remove();
    return;
  }
  messages.push({role: "assistant", content: reply.trim()});  // as tools/generate.py --chat keeps it
  bubble.dataset.finish = finish || "";
  if (finish === "stopped" || finish === "length") {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = finish === "stopped" ? "(stopped)" : "(cut off at the token limit)";
    bubble.appendChild(note);
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  messages.length = 0;
  $("log").textContent = "";
  showError("");
});
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });

fetch("/v1/models").then((r) => r.json()).then((list) => {
  model = list.data[0].id;
  const room = list.data[0].max_model_len;
  $("model").textContent = model + " · " + room + " tokens";
  $("max-tokens").max = room - 1;
  if (parseInt($("max-tokens").value, 10) >= room) $("max-tokens").value = Math.floor(room / 2);
}).catch(() => showError("Error: the server does not answer /v1/models"));
