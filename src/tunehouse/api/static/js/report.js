// A file's validation report (``tunehouse validate`` as JSON): verdict, line-exact issues,
// token statistics and the token-length histogram.

import { fill, fmtNum, h, table } from "./api.js";
import { histogramChart } from "./charts.js";

function verdict(report) {
  const counts = `${report.n_errors} error${report.n_errors === 1 ? "" : "s"}, `
    + `${report.n_warnings} warning${report.n_warnings === 1 ? "" : "s"}`;
  return h("p", { id: "report-verdict", class: report.ok ? "verdict ok" : "verdict bad" },
    report.ok ? "Ready for fine-tuning" : "Not usable for fine-tuning", ` (${counts}). `,
    `${fmtNum(report.n_examples)} example${report.n_examples === 1 ? "" : "s"}`,
    report.format ? `, ${report.format} format` : "",
    `; checked as a training file with the tokenizer of ${report.model}`,
    report.max_length ? ` (context ${fmtNum(report.max_length)} tokens).` : ".");
}

function issues(report) {
  if (!report.issues.length) return h("p", { class: "muted" }, "No issues found.");
  const rows = report.issues.map((i) => [
    i.line === null ? "file" : fmtNum(i.line),
    i.message_index === null ? "" : fmtNum(i.message_index),
    i.key || "",
    h("span", { class: `severity-${i.severity}` }, i.severity),
    h("code", {}, i.code),
    i.message,
  ]);
  return [
    table("Issues, in line order", ["Line", "Message #", "Key", "Severity", "Code", "Problem"], rows,
      { class: "data compact", id: "report-issues" }),
    report.n_issues_omitted
      ? h("p", { class: "muted" }, `${report.n_issues_omitted} more issue(s) not shown.`) : null,
  ];
}

function tokenTable(tokens) {
  const spread = (s) => `${fmtNum(s.min)} / ${fmtNum(s.median)} / ${fmtNum(s.mean, 1)} / `
    + fmtNum(s.max);
  return table("Token statistics", ["Statistic", "Value"], [
    ["Tokens per example (min / median / mean / max)", spread(tokens.per_example)],
    ["Trained tokens per example (min / median / mean / max)",
      spread(tokens.trained_per_example)],
    ["Tokens in the file", fmtNum(tokens.total)],
    ["Trained (assistant) tokens", fmtNum(tokens.trained_total)],
    ["Tokens processed per epoch", fmtNum(tokens.processed_total)],
    ["Examples longer than the context (truncated)", fmtNum(tokens.n_truncated)],
  ], { class: "data compact", id: "report-tokens" });
}

function otherStats(report) {
  const s = report.stats || {};
  const rows = [
    ["Lines", fmtNum(s.n_lines)], ["Blank lines", fmtNum(s.n_blank_lines)],
    ["Valid examples", fmtNum(s.n_valid_examples)],
    ["Duplicate examples", fmtNum((s.duplicates || []).length)],
    ["Prompts with conflicting answers", fmtNum((s.conflicts || []).length)],
    ["Epochs (auto)", s.epochs_auto ? fmtNum(s.epochs) : "—"],
  ];
  if (s.bom) rows.push(["Byte-order mark", "yes"]);
  if (s.crlf) rows.push(["Windows line endings", "yes"]);
  return table("File statistics", ["Statistic", "Value"], rows, { class: "data compact" });
}

/** Fill ``box`` with the report; returns the charts it created (to destroy later). */
export async function renderReport(box, report) {
  const tokens = report.stats && report.stats.tokens;
  const canvas = tokens ? h("canvas", { id: "length-histogram", role: "img",
    "aria-label": `Histogram of tokens per example in ${report.file}` }) : null;
  fill(box,
    h("h2", { id: "report-title" }, "Validation report: ", report.file),
    report.id ? h("p", { class: "mono muted" }, report.id) : null,
    verdict(report),
    report.id && report.ok ? h("p", {}, h("a", { href: `#/new?file=${report.id}`,
      class: "button", id: "report-new-job" }, "Fine-tune on this file")) : null,
    issues(report),
    h("div", { class: "grid two" },
      h("div", {}, tokens ? tokenTable(tokens) : h("p", { class: "muted" },
        "No token statistics: no example is valid."), otherStats(report)),
      tokens ? h("figure", {}, h("div", { class: "chart-box small" }, canvas),
        h("figcaption", {}, "Tokens per example (examples per length bucket)")) : h("div")),
  );
  return canvas ? [await histogramChart(canvas, tokens.histogram)] : [];
}
