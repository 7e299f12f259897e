// One job: live loss curves (the metrics endpoint polled every 2 s while the job is active),
// controls, summary, hyperparameters, checkpoints, result files and the events log.

import { api, apiBlob, badge, fmtNum, fmtTime, h, showError, table } from "./api.js";
import { lossChart } from "./charts.js";
import { ACTIVE, progressCell } from "./jobs.js";

const POLL_MS = 2000;
const CONTROLS = {
  pause: ["validating_files", "queued", "running"],
  resume: ["paused"],
  cancel: ["validating_files", "queued", "running", "paused"],
};
const fileNames = new Map();

function playgroundLink(model, text) {
  return h("a", { href: `#/playground?right=${encodeURIComponent(model)}` }, text);
}

function summary(job, metrics) {
  const last = metrics.length ? metrics[metrics.length - 1] : null;
  const progress = last ? { step: last.step, total: last.total_steps || last.step } : null;
  const rows = [
    ["Status", badge(job.status)],
    ["Base model", job.model],
    ["Fine-tuned model", job.fine_tuned_model
      ? h("span", {}, h("span", { class: "mono" }, job.fine_tuned_model), " ",
        playgroundLink(job.fine_tuned_model, "Try it")) : "—"],
    ["Training file", h("a", { href: `#/files/${job.training_file}`, class: "mono" },
      job.training_file)],
    ["Validation file", job.validation_file ? h("a", { href: `#/files/${job.validation_file}`,
      class: "mono" }, job.validation_file) : "—"],
    ["Created", fmtTime(job.created_at)],
    ["Finished", fmtTime(job.finished_at)],
    ["Estimated finish", job.estimated_finish ? fmtTime(job.estimated_finish) : "—"],
    ["Trained tokens", fmtNum(job.trained_tokens)],
    ["Progress", progressCell(job, progress)],
  ];
  if (job.error && job.error.message) {
    rows.push(["Error", h("span", { class: "error" }, `${job.error.code || "error"}: `,
      job.error.message, job.error.param ? ` (${job.error.param})` : "")]);
  }
  return h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function hyperparameters(job) {
  const method = job.method || { type: "supervised" };
  const hp = (method[method.type] || {}).hyperparameters || job.hyperparameters || {};
  const rows = [["method", method.type], ...Object.entries(hp).map(([k, v]) => [k, fmtNum(v, 6)]),
    ["seed", fmtNum(job.seed)], ["suffix", job.user_provided_suffix || "—"]];
  return table(null, ["Name", "Value"], rows, { class: "data compact", id: "hyperparameters" });
}

function checkpoints(list) {
  if (!list.length) return h("p", { class: "muted" }, "No checkpoints yet (one per epoch).");
  return table(null, ["Step", "Model", "Train loss", "Valid loss", "Created", ""],
    list.map((c) => [fmtNum(c.step_number), h("span", { class: "mono" },
      c.fine_tuned_model_checkpoint), fmtNum(c.metrics.train_loss),
    fmtNum(c.metrics.full_valid_loss ?? c.metrics.valid_loss), fmtTime(c.created_at),
    playgroundLink(c.fine_tuned_model_checkpoint, "Chat")]),
    { class: "data compact", id: "checkpoints" });
}

function events(list) {
  if (!list.length) return h("p", { class: "muted" }, "No events yet.");
  return h("ol", { class: "events", id: "events" }, list.map((e) => h("li",
    { class: `level-${e.level}` }, h("time", {}, fmtTime(e.created_at)), " ",
    h("span", { class: "level" }, e.level), " ", e.message)));
}

async function openResult(id, name, asPage) {
  const blob = await apiBlob(`/v1/files/${id}/content`);
  const typed = asPage ? new Blob([blob], { type: "text/html" }) : blob;
  const url = URL.createObjectURL(typed);
  if (asPage) {
    window.open(url, "_blank", "noopener");
  } else {
    const link = h("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
  }
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function results(job, errorBox) {
  if (!job.result_files || !job.result_files.length) {
    return h("p", { class: "muted" }, "Result files appear when the job succeeds.");
  }
  const items = [];
  for (const id of job.result_files) {
    if (!fileNames.has(id)) fileNames.set(id, (await api(`/v1/files/${id}`)).filename);
    const name = fileNames.get(id);
    const report = name.endsWith(".html");
    const open = () => openResult(id, name, report).catch((err) => showError(errorBox, err));
    items.push(h("li", {}, h("button", { type: "button", class: "link", onclick: open },
      report ? `Open evaluation report (${name})` : `Download ${name}`)));
  }
  return h("ul", { class: "plain", id: "result-files" }, items);
}

function controls(job, onAction) {
  return Object.keys(CONTROLS).map((action) => h("button", {
    type: "button", id: `job-${action}`, class: action === "cancel" ? "danger" : "",
    disabled: !CONTROLS[action].includes(job.status),
    "aria-label": `${action[0].toUpperCase()}${action.slice(1)} job ${job.id}`,
    onclick: () => onAction(action),
  }, `${action[0].toUpperCase()}${action.slice(1)}`));
}

function layout(jobId, canvas) {
  const part = (id, title) => h("section", { class: "card", "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title), h("div", { id }));
  return [
    h("div", { class: "title-row" }, h("h1", {}, "Job ", h("span", { class: "mono" }, jobId)),
      h("div", { class: "controls", id: "job-controls" })),
    h("p", { class: "error", role: "alert", id: "job-error", hidden: true }),
    h("div", { class: "grid two" }, part("job-summary", "Summary"),
      part("job-hparams", "Hyperparameters")),
    h("section", { class: "card", "aria-labelledby": "loss-title" },
      h("h2", { id: "loss-title" }, "Loss"),
      h("figure", {}, h("div", { class: "chart-box" }, canvas),
        h("figcaption", { id: "loss-caption", "aria-live": "polite" }, "No steps yet."))),
    h("div", { class: "grid two" }, part("job-checkpoints", "Checkpoints"),
      part("job-results", "Results")),
    part("job-events", "Events"),
  ];
}

function caption(metrics) {
  if (!metrics.length) return "No steps yet.";
  const last = metrics[metrics.length - 1];
  const valid = [...metrics].reverse().find((m) => typeof m.valid_loss === "number");
  return `Step ${last.step}${last.total_steps ? ` of ${last.total_steps}` : ""}: training loss `
    + `${fmtNum(last.train_loss)}` + (valid ? `, validation loss ${fmtNum(valid.valid_loss)}` : "");
}

export async function showJob(main, jobId) {
  const canvas = h("canvas", { id: "loss-chart", role: "img",
    "aria-label": "Training and validation loss by step" });
  main.replaceChildren(...layout(jobId, canvas));
  const $ = (id) => document.getElementById(id);
  const chart = await lossChart(canvas);
  let timer = null;
  let stopped = false;

  async function refresh() {
    const base = `/v1/fine_tuning/jobs/${jobId}`;
    const [job, metrics, evs, ckpts] = await Promise.all([api(base), api(`${base}/metrics`),
      api(`${base}/events?limit=200`), api(`${base}/checkpoints?limit=100`)]);
    if (stopped) return job;
    chart.update(metrics.data);
    $("loss-caption").textContent = caption(metrics.data);
    $("job-controls").replaceChildren(badge(job.status), ...controls(job, act));
    $("job-summary").replaceChildren(summary(job, metrics.data));
    $("job-hparams").replaceChildren(hyperparameters(job));
    $("job-checkpoints").replaceChildren(checkpoints(ckpts.data));
    $("job-events").replaceChildren(events(evs.data));
    $("job-results").replaceChildren(await results(job, $("job-error")));
    return job;
  }

  let inflight = null;
  async function poll() {
    let job = null;
    try {
      job = await refresh();
    } catch (err) {
      if (err.status === 401) return;
      showError($("job-error"), err);
    }
    clearTimeout(timer);
    if (!stopped && (!job || ACTIVE.includes(job.status))) timer = setTimeout(tick, POLL_MS);
  }
  function tick() { // one refresh at a time
    if (!inflight) inflight = poll().finally(() => { inflight = null; });
    return inflight;
  }

  async function act(action) {
    if (action === "cancel" && !window.confirm(`Cancel job ${jobId}? This cannot be undone.`)) {
      return;
    }
    try {
      await api(`/v1/fine_tuning/jobs/${jobId}/${action}`, { method: "POST" });
      $("job-error").hidden = true;
    } catch (err) {
      showError($("job-error"), err);
    }
    await inflight; // a refresh started before the action would show the old status
    await tick();
  }

  await tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
    chart.destroy();
  };
}
