// Charts with Chart.js (the UMD build from static/vendor sets ``window.Chart``).

const COLORS = { train: "#1f6feb", valid: "#d9480f", full: "#2b8a3e", bar: "#5c7cfa" };

function whenChartReady() {
  // the vendor script is "defer" and runs before module scripts; this is a safety net
  if (window.Chart) return Promise.resolve(window.Chart);
  return new Promise((resolve) => window.addEventListener("load", () => resolve(window.Chart)));
}

function points(metrics, key) {
  return metrics.filter((m) => typeof m[key] === "number").map((m) => ({ x: m.step, y: m[key] }));
}

/**
 * A loss-by-step line chart on ``canvas``; ``update(metrics)`` redraws with the metrics rows
 * of ``/v1/fine_tuning/jobs/{id}/metrics``. The canvas carries ``data-points`` and
 * ``data-valid-points`` (how many training and validation points are drawn) for tests.
 */
export async function lossChart(canvas) {
  const Chart = await whenChartReady();
  const dataset = (label, color, extra = {}) => ({
    label, data: [], borderColor: color, backgroundColor: color, borderWidth: 2,
    pointRadius: 0, tension: 0.15, ...extra,
  });
  const chart = new Chart(canvas, {
    type: "line",
    data: { datasets: [
      // points while there are few of them: a short run still shows its steps
      dataset("training loss", COLORS.train, { pointRadius: (c) => (c.dataset.data.length <= 40
        ? 2.5 : 0) }),
      dataset("validation loss", COLORS.valid, { pointRadius: 2 }),
      dataset("full validation loss", COLORS.full, { pointRadius: 5, showLine: false }),
    ] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      normalized: true, interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 } },
        y: { title: { display: true, text: "loss" } },
      },
      plugins: { legend: { position: "bottom", labels: {
        filter: (item, data) => data.datasets[item.datasetIndex].data.length > 0 } } },
    },
  });
  return {
    update(metrics) {
      const [train, valid, full] = chart.data.datasets;
      train.data = points(metrics, "train_loss");
      valid.data = points(metrics, "valid_loss");
      full.data = points(metrics, "full_valid_loss");
      canvas.dataset.points = String(train.data.length);
      canvas.dataset.validPoints = String(valid.data.length + full.data.length);
      chart.update("none");
    },
    destroy() {
      chart.destroy();
    },
  };
}

/** A bar chart of the token-length histogram ``{edges, counts}`` of a validation report. */
export async function histogramChart(canvas, histogram) {
  const Chart = await whenChartReady();
  const labels = histogram.counts.map((_, i) => {
    const lo = histogram.edges[i];
    return `${lo}–${histogram.edges[i + 1] - 1}`;
  });
  return new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: [{ label: "examples", data: histogram.counts,
      backgroundColor: COLORS.bar }] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      scales: {
        x: { title: { display: true, text: "tokens per example" } },
        y: { title: { display: true, text: "examples" }, beginAtZero: true,
          ticks: { precision: 0 } },
      },
      plugins: { legend: { display: false } },
    },
  });
}
