// Small DOM helpers. Text always goes in as text (textContent, text nodes): nothing the API
// answers is ever parsed as HTML.

/** An element with properties (className, type, ...), `text`, and aria-/data- attributes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("aria-") || key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`The page has no #${id}`);
  return node;
}

/** Shows `message` (or hides the element when it is empty). */
export function say(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function formatCount(value) {
  return value === undefined || value === null ? "" : integer.format(value);
}

/** Dollars: cents once there are some, else enough digits to see a single request's cost. */
export function formatUsd(value) {
  if (value === undefined || value === null) return "";
  if (value === 0) return "$0.00";
  const digits = Math.abs(value) >= 1 ? 2 : Math.abs(value) >= 0.01 ? 4 : 6;
  return `$${value.toFixed(digits)}`;
}

/** Unix seconds as a UTC date and time, e.g. 2026-12-06 22:30 UTC. */
export function formatTime(seconds) {
  if (!seconds) return "";
  return `${new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

/** The UTC day `days` before today, as YYYY-MM-DD. */
export function utcDay(daysAgo = 0, now = new Date()) {
  const day = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()));
  day.setUTCDate(day.getUTCDate() - daysAgo);
  return day.toISOString().slice(0, 10);
}
