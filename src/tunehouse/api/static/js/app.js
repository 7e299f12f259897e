// The dashboard's hash router and the API-key prompt. Each view is
// ``async (main, params) => cleanup`` and stops its polling in ``cleanup``.

import { api, authRequired, forgetKey, getKey, h, onUnauthorized, setKey, showError } from "./api.js";
import { showFiles } from "./files.js";
import { showJob } from "./job.js";
import { showJobs } from "./jobs.js";
import { showNewJob } from "./newjob.js";
import { showPlayground } from "./playground.js";

const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, "jobs", showJob],
  [/^#\/(?:jobs)?$/, "jobs", showJobs],
  [/^#\/files(?:\/([\w-]+))?$/, "files", showFiles],
  [/^#\/new(?:\?(.*))?$/, "new", showNewJob],
  [/^#\/playground(?:\?(.*))?$/, "playground", showPlayground],
];

const main = document.getElementById("main");
let cleanup = null;
let keyMessage = "";

function highlight(section) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function keyForm() {
  highlight("");
  const error = h("p", { class: "error", role: "alert", id: "key-error", hidden: !keyMessage },
    keyMessage);
  const input = h("input", { id: "api-key", type: "password", required: true,
    autocomplete: "current-password", "aria-describedby": "api-key-help" });
  const remember = h("input", { id: "remember-key", type: "checkbox" });
  const form = h("form", { class: "card narrow", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "API key"),
    h("p", { id: "api-key-help" }, "This server needs one of its API keys (TUNEHOUSE_API_KEYS). ",
      "It is kept in this browser tab and sent as Authorization: Bearer to the API."),
    // for password managers; the key has no user name
    h("input", { type: "text", autocomplete: "username", value: "tunehouse", hidden: true,
      "aria-hidden": "true", tabindex: -1 }),
    h("label", { for: "api-key" }, "API key"), input,
    h("label", { class: "check" }, remember, " Remember on this browser"),
    error,
    h("button", { type: "submit" }, "Continue"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(input.value.trim(), remember.checked);
    keyMessage = "";
    try {
      await api("/v1/models");
      route();
    } catch (err) {
      forgetKey(); // a 401 has already re-drawn this form with the server's message
      if (err.status !== 401) showError(error, err);
    }
  });
  main.replaceChildren(form);
  input.focus();
}

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  document.getElementById("forget-key").hidden = !(authRequired && getKey());
  if (authRequired && !getKey()) {
    keyForm();
    return;
  }
  const hash = location.hash || "#/jobs";
  for (const [pattern, section, view] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    highlight(section);
    main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      cleanup = await view(main, match[1]);
    } catch (err) {
      if (err.status === 401) return;
      main.replaceChildren(h("p", { class: "error", role: "alert" }, err.message));
    }
    return;
  }
  highlight("");
  main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No page at ", hash, ". ",
    h("a", { href: "#/jobs" }, "Go to the jobs list"), "."));
}

onUnauthorized((message) => {
  forgetKey();
  keyMessage = message ? `The server refused the key: ${message}` : "";
  if (cleanup) cleanup();
  cleanup = null;
  keyForm();
});

document.getElementById("forget-key").addEventListener("click", () => {
  forgetKey();
  route();
});
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault(); // "#main" is not a route
  main.focus();
});
window.addEventListener("hashchange", route);
route();
