// The customer chat page: streams answers from /v1/chat/completions (SSE), keeps the conversation's history,
// and sends thumbs up/down, corrections and "talk to a human" requests back to the server. Under an answer it names
// the store documents the answer came from, and says when the bot handed the conversation to an agent.
// It recovers by itself when its session ends (12-hour expiry, a server that lost its secret): a 401 gets a new
// session, and the old session's conversation (now 404) goes on as a new one, with the history the page keeps.
"use strict";

const newConversationId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
                                           (b) => b.toString(16).padStart(2, "0")).join("");
const state = { token: null, model: null, history: [], busy: false, conversation: newConversationId() };
const $ = (id) => document.getElementById(id);

async function session() {
  const response = await fetch("/v1/sessions", { method: "POST" });
  if (!response.ok) throw new Error(await errorText(response));
  const body = await response.json();
  state.token = body.token;
  state.model = body.model;
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch { return `error ${response.status}`; }
}

async function post(path, payload, retry = true) {
  if (!state.token) await session();
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.token}` },
    body: JSON.stringify(payload),
  });
  if (response.status === 401 && retry) {  // the session expired: get a new one and try once more
    state.token = null;
    return post(path, payload, false);
  }
  return response;
}

function bubble(role, text) {
  const item = document.createElement("li");
  item.className = `msg ${role}`;
  item.textContent = text;
  $("messages").appendChild(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

// The last chunk of a stream carries `sources` (the knowledge passages behind the answer; a stored answer given as
// written: its Q&A pair alone, marked `reused`) and `handoff`.
function answerFooter(item, final) {
  const sources = final.sources || [];
  const labels = [...new Set(sources.map((source) => source.label))];
  if (labels.length) {
    const reused = sources[0].reused ? " (its stored answer, as written)" : "";
    item.appendChild(Object.assign(document.createElement("div"), { className: "sources",
                                                                    textContent: `from: ${labels.join("; ")}${reused}` }));
  }
  if (final.handoff) {
    item.appendChild(Object.assign(document.createElement("div"), { className: "handoff-note",
      textContent: "This conversation has been passed to our support team." }));
  }
}

function feedbackControls(item, completionId) {
  const box = document.createElement("div");
  box.className = "rate";
  const up = Object.assign(document.createElement("button"), { type: "button", className: "secondary up",
                                                               textContent: "👍", title: "Helpful" });
  const down = Object.assign(document.createElement("button"), { type: "button", className: "secondary down",
                                                                 textContent: "👎", title: "Not helpful" });
  box.append(up, down);
  item.appendChild(box);
  const done = (text) => { box.replaceChildren(Object.assign(document.createElement("span"),
                                                              { className: "thanks", textContent: text })); };
  const send = async (rating, correction) => {
    const response = await post("/v1/feedback", { completion_id: completionId, rating, correction });
    done(response.ok ? "Thanks for your feedback!" : await errorText(response));
  };
  up.onclick = () => send("up");
  down.onclick = () => {
    const fix = Object.assign(document.createElement("textarea"), { className: "correction",
      placeholder: "This was wrong, the right answer is..." });
    const submit = Object.assign(document.createElement("button"), { type: "button", className: "submit-correction",
                                                                     textContent: "Send" });
    box.replaceChildren(fix, submit);
    fix.focus();
    submit.onclick = () => send("down", fix.value.trim() || null);
  };
}

async function askServer() {
  const request = async () => {
    if (!state.token) await session();
    return post("/v1/chat/completions", { model: state.model, stream: true, messages: state.history,
                                          metadata: { conversation_id: state.conversation } });
  };
  const response = await request();
  if (response.status === 404 && await isOurConversationGone(response.clone())) {
    state.conversation = newConversationId();  // it belonged to a session that ended: go on in a new one
    return request();
  }
  return response;
}

async function isOurConversationGone(response) {
  try { return (await response.json()).error.param === "metadata.conversation_id"; } catch { return false; }
}

async function ask(question) {
  state.busy = true;
  $("send").disabled = true;
  bubble("user", question);
  state.history.push({ role: "user", content: question });
  const item = bubble("bot", "");
  item.classList.add("answer", "streaming");
  let text = "", completionId = null, final = {};
  try {
    const response = await askServer();
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (event === "[DONE]") continue;
        const chunk = JSON.parse(event);
        if (chunk.error) throw new Error(chunk.error.message);
        completionId = chunk.id;
        if ("handoff" in chunk) final = chunk;
        const piece = chunk.choices.length ? chunk.choices[0].delta.content : "";
        if (piece) { text += piece; item.textContent = text; item.scrollIntoView({ block: "end" }); }
      }
    }
    state.history.push({ role: "assistant", content: text });
    item.classList.remove("streaming");
    answerFooter(item, final);
    if (completionId) feedbackControls(item, completionId);
  } catch (error) {
    state.history.pop();
    item.classList.remove("streaming");
    item.classList.add("error");
    item.textContent = `Sorry, something went wrong: ${error.message}`;
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy) return;
  $("question").value = "";
  ask(question);
});

$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask").requestSubmit(); }
});

$("human").addEventListener("click", async () => {
  $("human").disabled = true;
  const response = await post("/v1/handoff", { conversation_id: state.conversation });
  const body = response.ok ? await response.json() : null;
  bubble("notice", body ? body.message : "Please ask a question first, then we can hand you over to a person.");
  if (!body) $("human").disabled = false;
});
