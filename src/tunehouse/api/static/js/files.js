// Files: upload (checked first with POST /v1/files/validation, so every problem is shown
// before anything is stored), the list, and each file's validation report.

import { api, fmtBytes, fmtTime, h, showError, table } from "./api.js";
import { renderReport } from "./report.js";

const DRY_RUN_LIMIT = 32 * 1024 * 1024; // the server's JSON body cap; bigger files upload directly
let flash = ""; // the upload message, shown again after the page moves to the new file

function uploadForm(onUploaded, showReport) {
  const input = h("input", { id: "upload-file", type: "file", accept: ".jsonl,application/jsonl",
    required: true, "aria-describedby": "upload-help" });
  const status = h("p", { id: "upload-status", role: "status" }, flash);
  flash = "";
  const error = h("p", { id: "upload-error", class: "error", role: "alert", hidden: true });
  const button = h("button", { type: "submit", id: "upload-button" }, "Check and upload");
  const form = h("form", { class: "card", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a training or validation file"),
    h("p", { id: "upload-help", class: "muted" }, "JSONL in OpenAI's chat format (or preference ",
      "pairs for DPO). The file is checked first; a file with errors is not uploaded."),
    h("div", { class: "row" }, h("label", { for: "upload-file" }, "JSONL file"), input, button),
    status, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) return;
    error.hidden = true;
    button.disabled = true;
    try {
      if (file.size <= DRY_RUN_LIMIT) {
        status.textContent = `Checking ${file.name}…`;
        const report = await api(`/v1/files/validation?filename=${encodeURIComponent(file.name)}`,
          { method: "POST", body: file, headers: { "Content-Type": "application/jsonl" } });
        if (!report.ok) {
          status.textContent = `${file.name} was not uploaded: fix the errors listed below.`;
          showReport(report);
          return;
        }
      }
      status.textContent = `Uploading ${file.name}…`;
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      const stored = await api("/v1/files", { method: "POST", body: form });
      status.textContent = flash = `Uploaded ${file.name} as ${stored.id}.`;
      input.value = "";
      onUploaded(stored);
    } catch (err) {
      status.textContent = "";
      showError(error, err);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function filesTable(files, selected) {
  if (!files.length) return h("p", { class: "empty" }, "No files yet.");
  return table(null, ["File", "ID", "Size", "Purpose", "Created", ""], files.map((f) => [
    f.filename, h("span", { class: "mono" }, f.id), fmtBytes(f.bytes), f.purpose,
    fmtTime(f.created_at),
    f.purpose === "fine-tune"
      ? h("a", { href: `#/files/${f.id}`, "aria-current": f.id === selected ? "true" : null,
        "aria-label": `Validation report of ${f.filename}` }, "Validation report")
      : "",
  ]), { id: "files-table", class: "data" });
}

export async function showFiles(main, fileId) {
  const listBox = h("div", { id: "files-list" });
  const reportBox = h("section", { id: "report", class: "card", "aria-labelledby": "report-title",
    hidden: true });
  let charts = [];
  const showReport = async (report) => {
    charts.forEach((c) => c.destroy());
    reportBox.hidden = false;
    charts = await renderReport(reportBox, report);
    reportBox.scrollIntoView({ block: "start" });
  };
  const reload = async () => {
    const files = await api("/v1/files");
    listBox.replaceChildren(filesTable(files.data, fileId));
  };
  const uploaded = (stored) => {
    if (location.hash === `#/files/${stored.id}`) reload();
    else location.hash = `#/files/${stored.id}`;
  };
  main.replaceChildren(h("h1", {}, "Files"), uploadForm(uploaded, showReport),
    h("section", { class: "card", "aria-labelledby": "files-title" },
      h("h2", { id: "files-title" }, "Your files"), listBox),
    reportBox);
  await reload();
  if (fileId) {
    reportBox.hidden = false;
    reportBox.replaceChildren(h("h2", { id: "report-title" }, "Validation report"),
      h("p", { role: "status" }, "Checking the file with the base model's tokenizer…"));
    try {
      await showReport(await api(`/v1/files/${fileId}/validation`));
    } catch (err) {
      if (err.status === 401) return () => {};
      reportBox.replaceChildren(h("h2", { id: "report-title" }, "Validation report"),
        h("p", { class: "error", role: "alert" }, err.message));
    }
  }
  return () => charts.forEach((c) => c.destroy());
}
