// The jobs list: status, model, created, trained tokens and progress; refreshed while any
// job is still active.

import { api, badge, fill, fmtNum, fmtTime, h, table } from "./api.js";

export const ACTIVE = ["validating_files", "queued", "running", "paused"];
const POLL_MS = 3000;
const IDLE_POLL_MS = 15000;
const finalProgress = new Map(); // job id -> progress of a job that can no longer move

/** ``{step, total}`` of a job from its newest metrics event (null when it has none). */
export async function jobProgress(job) {
  if (finalProgress.has(job.id)) return finalProgress.get(job.id);
  let progress = null;
  if (job.trained_tokens || job.status === "running" || job.status === "paused") {
    const events = await api(`/v1/fine_tuning/jobs/${job.id}/events?limit=25`);
    const last = events.data.find((e) => e.type === "metrics" && e.data && e.data.step);
    if (last) progress = { step: last.data.step, total: last.data.total_steps || last.data.step };
  }
  if (job.status === "succeeded" && progress) progress.step = progress.total;
  if (!ACTIVE.includes(job.status)) finalProgress.set(job.id, progress);
  return progress;
}

/** A <progress> bar with a text label, or a dash. */
export function progressCell(job, progress) {
  if (!progress) return job.status === "succeeded" ? "100%" : "—";
  const pct = Math.round((100 * progress.step) / Math.max(1, progress.total));
  return h("span", { class: "progress" },
    h("progress", { max: progress.total, value: progress.step,
      "aria-label": `Job ${job.id}: step ${progress.step} of ${progress.total}` }),
    ` ${progress.step}/${progress.total} (${pct}%)`);
}

function modelCell(job) {
  return job.fine_tuned_model
    ? h("span", {}, job.model, h("br"), h("small", { class: "mono" }, job.fine_tuned_model))
    : job.model;
}

async function render(holder) {
  const jobs = await api("/v1/fine_tuning/jobs?limit=100");
  const progress = await Promise.all(jobs.data.map(jobProgress));
  const rows = jobs.data.map((job, i) => [
    h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id),
    badge(job.status),
    modelCell(job),
    fmtTime(job.created_at),
    fmtNum(job.trained_tokens),
    progressCell(job, progress[i]),
  ]);
  if (!rows.length) {
    holder.replaceChildren(h("p", { class: "empty" }, "No fine-tuning jobs yet. ",
      h("a", { href: "#/files" }, "Upload a training file"), " and ",
      h("a", { href: "#/new" }, "create a job"), "."));
    return false;
  }
  fill(holder, table(null, ["Job", "Status", "Model", "Created", "Trained tokens",
    "Progress"], rows, { id: "jobs-table", class: "data" }),
  jobs.has_more ? h("p", { class: "muted" }, "Showing the 100 newest jobs.") : null);
  return jobs.data.some((job) => ACTIVE.includes(job.status));
}

export async function showJobs(main) {
  const holder = h("div", { "aria-live": "polite", "aria-busy": "false" });
  main.replaceChildren(
    h("div", { class: "title-row" }, h("h1", {}, "Fine-tuning jobs"),
      h("a", { href: "#/new", class: "button" }, "New job")),
    holder);
  let timer = null;
  let stopped = false;
  const tick = async () => {
    let active = false;
    try {
      active = await render(holder);
    } catch (err) {
      if (err.status === 401) return;
      holder.replaceChildren(h("p", { class: "error", role: "alert" }, err.message));
    }
    if (!stopped) timer = setTimeout(tick, active ? POLL_MS : IDLE_POLL_MS);
  };
  await tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
