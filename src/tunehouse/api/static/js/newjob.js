// Create a fine-tuning job: training/validation file, base model, method and hyperparameters
// ("auto" when left empty).

import { api, h, showError } from "./api.js";

const HPARAMS = [
  ["n_epochs", "Epochs", "auto or a whole number 1–50", "auto|[1-9][0-9]?"],
  ["batch_size", "Batch size", "auto or a whole number 1–256", "auto|[1-9][0-9]{0,2}"],
  ["learning_rate_multiplier", "Learning-rate multiplier", "auto or a number > 0",
    "auto|[0-9]*\\.?[0-9]+(e-?[0-9]+)?"],
  ["beta", "DPO beta", "auto or a number in (0, 2]", "auto|[0-9]*\\.?[0-9]+"],
];

function field(id, label, input, help) {
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    help ? h("small", { id: `${id}-help` }, help) : null);
}

function select(id, options, attrs = {}) {
  return h("select", { id, name: id, ...attrs },
    options.map(([value, text]) => h("option", { value }, text)));
}

function hparamValue(raw, name) {
  const text = raw.trim().toLowerCase();
  if (!text || text === "auto") return "auto";
  return name === "n_epochs" || name === "batch_size" ? parseInt(text, 10) : Number(text);
}

function requestBody(form) {
  const value = (id) => form.querySelector(`#${id}`).value.trim();
  const method = value("job-method");
  const hp = {};
  for (const [name] of HPARAMS) {
    if (name === "beta" && method !== "dpo") continue;
    hp[name] = hparamValue(value(`hp-${name}`), name);
  }
  const body = { model: value("job-model"), training_file: value("job-training-file"),
    method: { type: method, [method]: { hyperparameters: hp } } };
  if (value("job-validation-file")) body.validation_file = value("job-validation-file");
  if (value("job-suffix")) body.suffix = value("job-suffix");
  if (value("job-seed")) body.seed = parseInt(value("job-seed"), 10);
  return body;
}

export async function showNewJob(main, query) {
  const [models, files] = await Promise.all([api("/v1/models"), api("/v1/files?purpose=fine-tune")]);
  const bases = models.data.filter((m) => m.owned_by !== "user");
  main.replaceChildren(h("h1", {}, "New fine-tuning job"));
  if (!files.data.length) {
    main.append(h("p", { class: "empty" }, "No training file yet: ",
      h("a", { href: "#/files" }, "upload one first"), "."));
    return () => {};
  }
  const fileOptions = files.data.map((f) => [f.id, `${f.filename} (${f.id})`]);
  const wanted = new URLSearchParams(query || "").get("file");
  const error = h("p", { class: "error", role: "alert", id: "job-form-error", hidden: true });
  const beta = field("hp-beta", "DPO beta", h("input", { id: "hp-beta", type: "text",
    value: "auto", pattern: HPARAMS[3][3], "aria-describedby": "hp-beta-help" }), HPARAMS[3][2]);
  beta.hidden = true;
  const form = h("form", { class: "card", id: "new-job", "aria-labelledby": "new-job-title" },
    h("h2", { id: "new-job-title" }, "Data and model"),
    h("div", { class: "grid three" },
      field("job-training-file", "Training file", select("job-training-file", fileOptions,
        { required: true })),
      field("job-validation-file", "Validation file (optional)",
        select("job-validation-file", [["", "none"], ...fileOptions])),
      field("job-model", "Base model", select("job-model", bases.map((m) => [m.id, m.id]),
        { required: true }))),
    h("h2", {}, "Method and hyperparameters"),
    h("p", { class: "muted" }, "Leave a value at auto to let tunehouse choose it from the size ",
      "of the data, as OpenAI does; the chosen values show on the job page when it finishes."),
    h("div", { class: "grid three" },
      field("job-method", "Method", select("job-method", [["supervised", "supervised (SFT)"],
        ["dpo", "preference (DPO)"]])),
      HPARAMS.slice(0, 3).map(([name, label, help, pattern]) => field(`hp-${name}`, label,
        h("input", { id: `hp-${name}`, type: "text", value: "auto", pattern,
          "aria-describedby": `hp-${name}-help` }), help)),
      beta,
      field("job-suffix", "Model name suffix (optional)", h("input", { id: "job-suffix",
        type: "text", maxlength: 64, pattern: "[A-Za-z0-9._\\-]{1,64}",
        "aria-describedby": "job-suffix-help" }), "letters, digits, . _ -"),
      field("job-seed", "Seed (optional)", h("input", { id: "job-seed", type: "number", min: 0,
        max: 2147483647, step: 1 }))),
    error,
    h("button", { type: "submit", id: "create-job" }, "Create job"));
  main.append(form);
  if (wanted) form.querySelector("#job-training-file").value = wanted;
  form.querySelector("#job-method").addEventListener("change", (event) => {
    beta.hidden = event.target.value !== "dpo";
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: requestBody(form) });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showError(error, err.error && err.error.param ? `${err.message} (${err.error.param})` : err);
    }
  });
  return () => {};
}
