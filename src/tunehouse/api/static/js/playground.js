// The playground: one prompt sent to two models (the base model and a fine-tuned model or
// checkpoint), answers streamed side by side.

import { api, h, showError, streamChat } from "./api.js";

function modelSelect(id, models, chosen) {
  const groups = [["Base model", (m) => m.owned_by !== "user"],
    ["Fine-tuned models", (m) => m.owned_by === "user" && !m.id.includes(":ckpt-")],
    ["Checkpoints", (m) => m.owned_by === "user" && m.id.includes(":ckpt-")]];
  const select = h("select", { id, required: true }, groups.map(([label, keep]) => {
    const options = models.filter(keep).map((m) => h("option", { value: m.id }, m.id));
    return options.length ? h("optgroup", { label }, options) : null;
  }));
  if (chosen) select.value = chosen;
  return select;
}

function side(which, title) {
  return h("section", { class: "card answer-card", "aria-labelledby": `${which}-title` },
    h("h2", { id: `${which}-title` }, title),
    h("p", { class: "mono muted", id: `${which}-model` }),
    h("pre", { class: "answer", id: `${which}-answer`, "aria-live": "polite", tabindex: 0 }),
    h("p", { class: "muted", id: `${which}-meta` }));
}

async function runSide(which, model, messages, options, signal) {
  const $ = (suffix) => document.getElementById(`${which}-${suffix}`);
  $("model").textContent = model;
  $("answer").textContent = "";
  $("answer").classList.remove("error");
  $("meta").textContent = "Waiting for the first token…";
  const answer = $("answer");
  answer.dataset.chunks = "0"; // how many deltas arrived (streaming shows as several)
  const t0 = performance.now();
  try {
    const usage = await streamChat({ model, messages, ...options }, (text) => {
      answer.textContent += text;
      answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
    }, signal);
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    const blank = answer.textContent.trim() ? "" : " — the answer is empty or only whitespace";
    $("meta").textContent = (usage
      ? `${usage.completion_tokens} tokens in ${seconds} s (prompt ${usage.prompt_tokens} tokens)`
      : `done in ${seconds} s`) + blank;
  } catch (err) {
    if (err.name === "AbortError") {
      $("meta").textContent = "Stopped.";
      return;
    }
    if (err.status === 401) return;
    $("answer").classList.add("error");
    $("answer").textContent = err.message;
    $("meta").textContent = "";
  }
}

function promptForm(models, left, right) {
  return h("form", { class: "card", id: "playground-form", "aria-labelledby": "prompt-title" },
    h("h2", { id: "prompt-title" }, "Prompt"),
    h("div", { class: "grid two" },
      h("div", { class: "field" }, h("label", { for: "left-select" }, "Left model"),
        modelSelect("left-select", models, left)),
      h("div", { class: "field" }, h("label", { for: "right-select" }, "Right model"),
        modelSelect("right-select", models, right))),
    h("div", { class: "field" }, h("label", { for: "system-prompt" }, "System message (optional)"),
      h("textarea", { id: "system-prompt", rows: 2 })),
    h("div", { class: "field" }, h("label", { for: "user-prompt" }, "User message"),
      h("textarea", { id: "user-prompt", rows: 4, required: true })),
    h("div", { class: "row" },
      h("label", { for: "max-tokens" }, "Max tokens"),
      h("input", { id: "max-tokens", type: "number", min: 1, max: 4096, value: 128 }),
      h("label", { for: "temperature" }, "Temperature"),
      h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 }),
      h("button", { type: "submit", id: "send" }, "Send to both"),
      h("button", { type: "button", id: "stop", disabled: true }, "Stop")),
    h("p", { class: "error", role: "alert", id: "playground-error", hidden: true }));
}

export async function showPlayground(main, query) {
  const models = (await api("/v1/models")).data;
  const base = models.find((m) => m.owned_by !== "user");
  const tuned = [...models].reverse().find((m) => m.owned_by === "user");
  const params = new URLSearchParams(query || "");
  const left = params.get("left") || (base && base.id);
  const right = params.get("right") || (tuned || base || {}).id;
  const form = promptForm(models, left, right);
  main.replaceChildren(h("h1", {}, "Playground"),
    h("p", { class: "muted" }, "The same prompt goes to both models; answers stream side by side."),
    form, h("div", { class: "grid two" }, side("left", "Left answer"), side("right", "Right answer")));
  let controller = null;
  const $ = (id) => document.getElementById(id);
  $("stop").addEventListener("click", () => controller && controller.abort());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    controller = new AbortController();
    $("send").disabled = true;
    $("stop").disabled = false;
    $("playground-error").hidden = true;
    const messages = [];
    if ($("system-prompt").value.trim()) {
      messages.push({ role: "system", content: $("system-prompt").value });
    }
    messages.push({ role: "user", content: $("user-prompt").value });
    const options = { max_tokens: parseInt($("max-tokens").value, 10) || 128,
      temperature: Number($("temperature").value) };
    try {
      await Promise.all([
        runSide("left", $("left-select").value, messages, options, controller.signal),
        runSide("right", $("right-select").value, messages, options, controller.signal)]);
    } catch (err) {
      showError($("playground-error"), err);
    } finally {
      $("send").disabled = false;
      $("stop").disabled = true;
      controller = null;
    }
  });
  return () => controller && controller.abort();
}
