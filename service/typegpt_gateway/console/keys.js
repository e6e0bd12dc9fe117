// The Keys page: the table (sortable, filterable), create, edit limits and budgets, revoke.
import { call, keyPath } from "./api.js";
import { byId, el, formatCount, formatTime, formatUsd, say } from "./dom.js";

const LIMIT_FIELDS = ["rpm", "tpm", "max_concurrent", "budget_tokens", "budget_usd"];

function modelsText(record) {
  return Array.isArray(record.models) ? record.models.join(", ") : "every model";
}

function limitsText(record) {
  const parts = [];
  if (record.rpm !== undefined) parts.push(`${formatCount(record.rpm)} rpm`);
  if (record.tpm !== undefined) parts.push(`${formatCount(record.tpm)} tpm`);
  if (record.max_concurrent !== undefined) parts.push(`${formatCount(record.max_concurrent)} at once`);
  return parts.length ? parts.join(" · ") : "none";
}

/** What the budget cell says: each budget with what is spent and what is left. */
function budgetLines(record) {
  const period = record.budget_period || "month";
  const lines = [];
  if (record.budget_tokens !== undefined) {
    const used = record.tokens_used || 0;
    const left = Math.max(record.budget_tokens - used, 0);
    lines.push(
      `${formatCount(used)} of ${formatCount(record.budget_tokens)} tokens per ${period} (${formatCount(left)} left)`,
    );
  }
  if (record.budget_usd !== undefined) {
    const spent = record.spent_usd || 0;
    const left = Math.max(record.budget_usd - spent, 0);
    lines.push(`${formatUsd(spent)} of ${formatUsd(record.budget_usd)} per ${period} (${formatUsd(left)} left)`);
  }
  if (!lines.length) {
    lines.push(`none (${formatUsd(record.spent_usd || 0)} spent this ${period})`);
  }
  return lines;
}

function budgetSortValue(record) {
  return record.spent_usd || 0;
}

const SORT_VALUES = {
  name: (r) => r.name,
  prefix: (r) => r.prefix,
  models: modelsText,
  limits: (r) => r.rpm ?? r.tpm ?? r.max_concurrent ?? Number.POSITIVE_INFINITY,
  budget: budgetSortValue,
  created_at: (r) => r.created_at || 0,
  expires_at: (r) => r.expires_at ?? Number.POSITIVE_INFINITY,
  last_used_day: (r) => r.last_used_day || "",
  status: (r) => r.status,
};

function compare(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b));
}

/** A form field's value for the API: a number, null when empty (no limit), or the text. */
function numberOrNull(input) {
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}

function modelsOrNull(input) {
  const models = input.value.split(",").map((model) => model.trim()).filter(Boolean);
  return models.length ? models : null;
}

export class KeysPage {
  constructor({ onApiError }) {
    this.onApiError = onApiError;
    this.records = [];
    this.sort = { column: "created_at", descending: true };
    this.editing = null;
    this.revoking = null;
    this.table = byId("keys-table");
    this.error = byId("keys-error");
    byId("keys-refresh").addEventListener("click", () => this.load());
    byId("keys-filter").addEventListener("input", () => this.render());
    byId("keys-status").addEventListener("change", () => this.render());
    for (const header of this.table.querySelectorAll("th[data-sort]")) {
      header.querySelector("button").addEventListener("click", () => this.sortBy(header.dataset.sort));
    }
    byId("create-form").addEventListener("submit", (event) => this.create(event));
    byId("new-key-copy").addEventListener("click", () => this.copyNewKey());
    byId("new-key-dismiss").addEventListener("click", () => this.hideNewKey());
    byId("edit-form").addEventListener("submit", (event) => this.saveEdit(event));
    byId("edit-cancel").addEventListener("click", () => byId("edit-dialog").close());
    byId("revoke-confirm").addEventListener("click", () => this.confirmRevoke());
    byId("revoke-cancel").addEventListener("click", () => byId("revoke-dialog").close());
    say(this.error, "");
  }

  names() {
    return this.records.map((record) => record.name);
  }

  /** Runs an API call; a refused key ends the session, any other error shows in `where`. */
  async attempt(where, action) {
    say(where, "");
    try {
      return { ok: true, value: await action() };
    } catch (error) {
      if (!this.onApiError(error)) say(where, error.message);
      return { ok: false };
    }
  }

  async load() {
    const result = await this.attempt(this.error, () => call("GET", "/v1/admin/keys"));
    if (!result.ok) return;
    this.records = result.value.data || [];
    this.render();
  }

  sortBy(column) {
    this.sort =
      this.sort.column === column
        ? { column, descending: !this.sort.descending }
        : { column, descending: false };
    this.render();
  }

  visibleRecords() {
    const words = byId("keys-filter").value.trim().toLowerCase();
    const status = byId("keys-status").value;
    const value = SORT_VALUES[this.sort.column];
    const sign = this.sort.descending ? -1 : 1;
    return this.records
      .filter((record) => !status || record.status === status)
      .filter(
        (record) =>
          !words ||
          [record.name, record.prefix, modelsText(record)].some((text) => text.toLowerCase().includes(words)),
      )
      .sort((a, b) => sign * compare(value(a), value(b)) || compare(a.name, b.name));
  }

  render() {
    for (const header of this.table.querySelectorAll("th[data-sort]")) {
      const sorted = header.dataset.sort === this.sort.column;
      if (sorted) header.setAttribute("aria-sort", this.sort.descending ? "descending" : "ascending");
      else header.removeAttribute("aria-sort");
    }
    const rows = this.visibleRecords().map((record) => this.row(record));
    const body = this.table.tBodies[0];
    if (rows.length) body.replaceChildren(...rows);
    else body.replaceChildren(el("tr", {}, el("td", { colSpan: 10, className: "muted", text: "No keys to show." })));
    byId("keys-count").textContent = `${rows.length} of ${this.records.length} keys`;
  }

  row(record) {
    const live = record.status === "active";
    const actions = el("td", { className: "actions" });
    if (live) {
      actions.append(
        el("button", {
          type: "button",
          className: "secondary small",
          text: "Edit",
          "aria-label": `Edit limits of ${record.name}`,
          onclick: () => this.openEdit(record),
        }),
        el("button", {
          type: "button",
          className: "danger small",
          text: "Revoke",
          "aria-label": `Revoke ${record.name}`,
          onclick: () => this.openRevoke(record),
        }),
      );
    }
    const budget = el("td", {});
    budgetLines(record).forEach((line, index) => {
      if (index) budget.append(el("br"));
      budget.append(line);
    });
    return el(
      "tr",
      { "data-name": record.name, "data-status": record.status },
      el("th", { scope: "row", text: record.name }),
      el("td", {}, el("code", { text: record.prefix })),
      el("td", { text: modelsText(record) }),
      el("td", { text: limitsText(record) }),
      budget,
      el("td", { text: formatTime(record.created_at) }),
      el("td", { text: record.expires_at ? formatTime(record.expires_at) : "never" }),
      el("td", { text: record.last_used_day || "never" }),
      el("td", {}, el("span", { className: `status ${record.status}`, text: record.status })),
      actions,
    );
  }

  async create(event) {
    event.preventDefault();
    const form = event.target;
    const body = { name: byId("create-name").value.trim() };
    const models = modelsOrNull(byId("create-models"));
    if (models) body.models = models;
    for (const field of LIMIT_FIELDS) {
      const value = numberOrNull(form.elements[field]);
      if (value !== null) body[field] = value;
    }
    if (byId("create-budget-period").value) body.budget_period = byId("create-budget-period").value;
    const expires = byId("create-expires-in").value.trim();
    if (expires) body.expires_in = expires;
    const result = await this.attempt(byId("create-error"), () =>
      call("POST", "/v1/admin/keys", { body }),
    );
    if (!result.ok) return;
    form.reset();
    this.showNewKey(result.value);
    await this.load();
  }

  showNewKey(record) {
    byId("new-key-name").textContent = record.name;
    byId("new-key-value").value = record.key;
    byId("new-key-copied").textContent = "";
    byId("new-key").hidden = false;
    byId("new-key-value").select();
    byId("new-key-copy").focus();
  }

  hideNewKey() {
    // Gone from the page too: it is not shown again.
    byId("new-key-value").value = "";
    byId("new-key").hidden = true;
  }

  async copyNewKey() {
    const input = byId("new-key-value");
    const status = byId("new-key-copied");
    try {
      await navigator.clipboard.writeText(input.value);
      status.textContent = "Copied.";
    } catch {
      // No clipboard access (a plain-HTTP address other than localhost): the text is selected
      // for Ctrl+C instead.
      input.select();
      status.textContent = "Select and copy it yourself: the browser refused the clipboard.";
    }
  }

  openEdit(record) {
    this.editing = record;
    byId("edit-name").textContent = record.name;
    byId("edit-models").value = Array.isArray(record.models) ? record.models.join(", ") : "";
    for (const field of LIMIT_FIELDS) {
      byId(`edit-${field.replaceAll("_", "-")}`).value = record[field] ?? "";
    }
    byId("edit-budget-period").value = record.budget_period || "";
    byId("edit-expires-in").value = "";
    say(byId("edit-error"), "");
    byId("edit-dialog").showModal();
  }

  async saveEdit(event) {
    event.preventDefault();
    const record = this.editing;
    const body = { models: modelsOrNull(byId("edit-models")) };
    for (const field of LIMIT_FIELDS) {
      body[field] = numberOrNull(byId(`edit-${field.replaceAll("_", "-")}`));
    }
    body.budget_period = byId("edit-budget-period").value || null;
    const expires = byId("edit-expires-in").value.trim();
    if (expires) body.expires_in = expires;
    const result = await this.attempt(byId("edit-error"), () =>
      call("PATCH", keyPath(record.name), { body }),
    );
    if (!result.ok) return;
    byId("edit-dialog").close();
    await this.load();
  }

  openRevoke(record) {
    this.revoking = record;
    byId("revoke-name").textContent = record.name;
    say(byId("revoke-error"), "");
    byId("revoke-dialog").showModal();
    // The safe choice has the focus.
    byId("revoke-cancel").focus();
  }

  async confirmRevoke() {
    const record = this.revoking;
    const result = await this.attempt(byId("revoke-error"), () => call("DELETE", keyPath(record.name)));
    if (!result.ok) return;
    byId("revoke-dialog").close();
    await this.load();
  }
}
