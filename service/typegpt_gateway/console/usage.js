// The Usage page: requests, tokens and cost per day stacked by model (the whole gateway or one
// key), the top keys by cost, and the same data as a table and as CSV. Charts by Chart.js
// (vendor/chart.umd.min.js, the global `Chart`).
import { call, usagePath } from "./api.js";
import { byId, el, formatCount, formatUsd, say, utcDay } from "./dom.js";

const TOP_KEYS = 10;
const CSV_COLUMNS = [
  "day",
  "model",
  "requests",
  "prompt_tokens",
  "completion_tokens",
  "errors",
  "cost_usd",
  "unpriced_requests",
  "estimated_requests",
];

/** One CSV cell; a leading = + - @ is defused so that a spreadsheet shows it as text. */
function csvCell(value) {
  let text = value === undefined || value === null ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text) && typeof value === "string") text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function toCsv(rows, scope) {
  const lines = [["key", ...CSV_COLUMNS].join(",")];
  for (const row of rows) {
    lines.push([scope, ...CSV_COLUMNS.map((column) => row[column] ?? 0)].map(csvCell).join(","));
  }
  return `${lines.join("\r\n")}\r\n`;
}

function days(count) {
  return Array.from({ length: count }, (_, index) => utcDay(count - 1 - index));
}

/** Chart.js datasets: one per model, a value per day (0 where the ledger has none). */
function stackedByModel(rows, labels, value) {
  const models = [...new Set(rows.map((row) => row.model))].sort();
  return models.map((model) => {
    const perDay = new Map(labels.map((day) => [day, 0]));
    for (const row of rows) {
      if (row.model === model && perDay.has(row.day)) perDay.set(row.day, perDay.get(row.day) + value(row));
    }
    return { label: model, data: labels.map((day) => perDay.get(day)) };
  });
}

const tokens = (row) => (row.prompt_tokens || 0) + (row.completion_tokens || 0);

export class UsagePage {
  constructor({ onApiError, keyNames }) {
    this.onApiError = onApiError;
    this.keyNames = keyNames;
    this.rows = [];
    this.charts = {};
    this.error = byId("usage-error");
    byId("usage-refresh").addEventListener("click", () => this.load());
    byId("usage-scope").addEventListener("change", () => this.load());
    byId("usage-range").addEventListener("change", () => this.load());
    byId("usage-csv").addEventListener("click", () => this.download());
    say(this.error, "");
  }

  async fetch(path) {
    try {
      return await call("GET", path);
    } catch (error) {
      if (!this.onApiError(error)) say(this.error, error.message);
      return null;
    }
  }

  async fillScopes() {
    let names = this.keyNames();
    if (!names.length) {
      const keys = await this.fetch("/v1/admin/keys");
      if (!keys) return false;
      names = keys.data.map((record) => record.name);
    }
    const select = byId("usage-scope");
    const chosen = select.value;
    const options = [el("option", { value: "", text: "the whole gateway" })];
    for (const name of [...new Set(names)].sort()) options.push(el("option", { value: name, text: name }));
    select.replaceChildren(...options);
    select.value = names.includes(chosen) ? chosen : "";
    return true;
  }

  async load() {
    const view = byId("usage-view");
    view.dataset.state = "loading";
    say(this.error, "");
    byId("usage-status").textContent = "Loading…";
    if (!(await this.fillScopes())) return this.failed();
    const count = Number(byId("usage-range").value);
    const labels = days(count);
    const key = byId("usage-scope").value;
    const since = labels[0];
    const [perDay, perKey] = await Promise.all([
      this.fetch(usagePath({ since, groupBy: "day,model", key })),
      this.fetch(usagePath({ since, groupBy: "key" })),
    ]);
    if (!perDay || !perKey) return this.failed();
    this.rows = perDay.data;
    this.scope = key || "all";
    this.since = since;
    const top = [...perKey.data].sort((a, b) => (b.cost_usd || 0) - (a.cost_usd || 0)).slice(0, TOP_KEYS);
    this.drawCharts(labels, this.rows, top);
    this.fillTables(this.rows, top);
    const unpriced = this.rows.reduce((sum, row) => sum + (row.unpriced_requests || 0), 0);
    const estimated = this.rows.reduce((sum, row) => sum + (row.estimated_requests || 0), 0);
    const notes = [];
    if (unpriced) notes.push(`${formatCount(unpriced)} requests were for models without a price: their cost is unknown, not counted.`);
    if (estimated) notes.push(`${formatCount(estimated)} requests have estimated tokens (the upstream never reported them).`);
    byId("usage-notes").textContent = notes.join(" ");
    const rowsText = this.rows.length === 1 ? "1 row" : `${this.rows.length} rows`;
    byId("usage-status").textContent = `${rowsText} since ${since}.`;
    view.dataset.state = "loaded";
  }

  failed() {
    byId("usage-status").textContent = "";
    byId("usage-view").dataset.state = "failed";
  }

  chart(id, config) {
    if (this.charts[id]) this.charts[id].destroy();
    this.charts[id] = new Chart(byId(id), config);
  }

  drawCharts(labels, rows, top) {
    const stacked = (title) => ({
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { position: "bottom" }, title: { display: false, text: title } },
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
    });
    const money = stacked("cost");
    money.scales.y.ticks = { callback: (value) => formatUsd(value) };
    this.chart("chart-requests", {
      type: "bar",
      data: { labels, datasets: stackedByModel(rows, labels, (row) => row.requests || 0) },
      options: stacked("requests"),
    });
    this.chart("chart-tokens", {
      type: "bar",
      data: { labels, datasets: stackedByModel(rows, labels, tokens) },
      options: stacked("tokens"),
    });
    this.chart("chart-cost", {
      type: "bar",
      data: { labels, datasets: stackedByModel(rows, labels, (row) => row.cost_usd || 0) },
      options: money,
    });
    this.chart("chart-top-keys", {
      type: "bar",
      data: {
        labels: top.map((row) => row.key),
        datasets: [{ label: "Cost (USD)", data: top.map((row) => row.cost_usd || 0) }],
      },
      options: {
        indexAxis: "y",
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: { legend: { display: false } },
        scales: { x: { beginAtZero: true, ticks: { callback: (value) => formatUsd(value) } } },
      },
    });
  }

  fillTables(rows, top) {
    const body = byId("usage-table").tBodies[0];
    const lines = rows.map((row) =>
      el(
        "tr",
        {
          "data-day": row.day,
          "data-model": row.model,
          "data-requests": row.requests || 0,
          "data-tokens": tokens(row),
          "data-cost-usd": row.cost_usd || 0,
        },
        el("td", { text: row.day }),
        el("td", { text: row.model }),
        el("td", { text: formatCount(row.requests || 0) }),
        el("td", { text: formatCount(row.prompt_tokens || 0) }),
        el("td", { text: formatCount(row.completion_tokens || 0) }),
        el("td", { text: formatCount(row.errors || 0) }),
        el("td", { text: formatUsd(row.cost_usd || 0) }),
      ),
    );
    body.replaceChildren(...(lines.length ? lines : [el("tr", {}, el("td", { colSpan: 7, className: "muted", text: "No usage in this period." }))]));
    const topBody = byId("top-keys-table").tBodies[0];
    topBody.replaceChildren(
      ...top.map((row) =>
        el(
          "tr",
          { "data-key": row.key, "data-cost-usd": row.cost_usd || 0 },
          el("th", { scope: "row", text: row.key }),
          el("td", { text: formatCount(row.requests || 0) }),
          el("td", { text: formatCount(tokens(row)) }),
          el("td", { text: formatUsd(row.cost_usd || 0) }),
        ),
      ),
    );
  }

  download() {
    const csv = toCsv(this.rows, this.scope || "all");
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv;charset=utf-8" }));
    const link = el("a", { href: url, download: `usage-${this.scope || "all"}-since-${this.since || utcDay()}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
}
