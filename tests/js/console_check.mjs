// The admin console in a real browser: Debian's chromium driven by playwright-core, against a
// live gateway that tests/e2e/test_console_browser.py started. One scenario per run:
//
//   node console_check.mjs SCENARIO '{"url": ..., "adminKey": ..., ...}'
//
// It prints one JSON line of what it saw, and exits 1 with the reason on any failure. Every
// scenario fails on a page error, a console error or a Content-Security-Policy violation, and
// writes a screenshot of each page it visited into `artifacts` when it fails.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const [scenario, rawConfig] = process.argv.slice(2);
const config = JSON.parse(rawConfig);
// Generous: a loaded machine may be slow; a condition that never comes still fails in time.
const PATIENCE_MS = config.patienceMs ?? 30_000;
const LAPTOP = { width: 1366, height: 900 };
const PHONE = { width: 390, height: 844 };

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

/** Polls `probe` until it returns something truthy; fails with `what` after PATIENCE_MS. */
async function waitFor(what, probe, { patience = PATIENCE_MS, every = 100 } = {}) {
  const deadline = Date.now() + patience;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Failure(`Timed out waiting for ${what} (last: ${last})`);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

async function text(page, selector) {
  return (await page.locator(selector).first().textContent()) ?? "";
}

async function visible(page, selector) {
  return page.locator(selector).first().isVisible();
}

/** The gateway's own API, outside the browser (as a client of the new key would call it). */
async function chat(key, model) {
  const response = await fetch(`${config.url}/v1/chat/completions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "Hello, how are you?" }] }),
  });
  return { status: response.status, body: await response.json() };
}

async function admin(method, route) {
  const response = await fetch(`${config.url}${route}`, {
    method,
    headers: { Authorization: `Bearer ${config.adminKey}` },
  });
  return response.json();
}

// --- the browser ---------------------------------------------------------------------------

const problems = [];
const shots = new Map();

async function openConsole(browser, viewport = LAPTOP) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  // Recorded before any script of the page runs: a violation during loading counts too.
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (event) => {
      window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
    });
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    // Chromium logs each error answer a fetch gets; the admin API's refusals are expected in
    // some scenarios, and the page shows them. Anything else counts.
    const failedLoad = message.text().startsWith("Failed to load resource");
    if (failedLoad && message.location().url.includes("/v1/admin/")) return;
    problems.push(`console error: ${message.text()} (${message.location().url})`);
  });
  // alert(), confirm() or prompt() would mean a script the console did not write ran.
  page.on("dialog", async (dialog) => {
    problems.push(`unexpected ${dialog.type()} dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
  await page.goto(`${config.url}/admin/`);
  await waitFor("the sign-in form", () => visible(page, "#sign-in-form"));
  return page;
}

/** Keeps a screenshot of each page the scenario visits, written out only if it fails. */
async function snap(page, name) {
  shots.set(name, await page.screenshot({ fullPage: true }));
}

/** Fails on what the browser reported. */
async function assertClean(page) {
  const violations = await page.evaluate(() => window.__cspViolations);
  check(violations.length === 0, `CSP violations: ${violations.join("; ")}`);
  check(problems.length === 0, problems.join("\n"));
}

async function signIn(page, key) {
  // Keyboard only: focus the field, type, press Enter.
  await page.focus("#admin-key");
  await page.keyboard.type(key);
  await page.keyboard.press("Enter");
}

async function signedIn(page) {
  await waitFor("the keys page", () => visible(page, "#keys-view"));
  await waitFor("the keys table", async () => (await text(page, "#keys-count")).includes("keys"));
}

/** Every control has an accessible name: a label, aria-label or its text. */
async function assertLabelled(page) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, button, textarea")]
      .filter((node) => {
        if (node.type === "hidden") return false;
        if (node.getAttribute("aria-label")) return false;
        if (node.labels && node.labels.length) return false;
        return node.tagName === "BUTTON" ? !node.textContent.trim() : true;
      })
      .map((node) => node.id || node.outerHTML.slice(0, 80)),
  );
  check(unlabelled.length === 0, `controls without a label: ${unlabelled.join(", ")}`);
}

async function assertFitsWidth(page) {
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  check(overflow <= 1, `the page is ${overflow}px wider than the screen`);
}

async function keyRow(page, name) {
  return page.locator(`#keys-table tbody tr[data-name="${name}"]`);
}

async function createKey(page, fields) {
  if (!(await page.locator("#create-panel").evaluate((node) => node.open))) {
    await page.click("#create-panel summary");
  }
  for (const [id, value] of Object.entries(fields)) await page.fill(`#create-${id}`, value);
  await page.click("#create-submit");
}

async function openUsage(page) {
  await page.click("#nav-usage");
  await waitFor("the usage page", () => visible(page, "#usage-view"));
}

/** The usage table's row of `model` on any day, once its requests reach `requests`. */
async function usageRow(page, model, requests) {
  return waitFor(`usage of ${model} in the chart data`, async () => {
    await page.click("#usage-refresh");
    await waitFor("usage loaded", () =>
      page.locator("#usage-view").evaluate((node) => node.dataset.state !== "loading"),
    );
    const rows = await page.locator("#usage-table tbody tr[data-model]").evaluateAll((nodes) =>
      nodes.map((node) => ({ ...node.dataset, text: node.textContent })),
    );
    return rows.find((row) => row.model === model && Number(row.requests) >= requests);
  });
}

// --- scenarios -----------------------------------------------------------------------------

const scenarios = {
  /** Sign in, create a key, chat with it, see its usage, change a limit, revoke it. */
  async journey(browser) {
    const page = await openConsole(browser);
    await snap(page, "sign-in");
    await assertLabelled(page);
    await signIn(page, config.adminKey);
    await signedIn(page);
    check(
      (await page.evaluate(() => Object.keys(localStorage).length + document.cookie.length)) === 0,
      "the admin key went into localStorage or a cookie",
    );
    check(!page.url().includes(config.adminKey), "the admin key is in the URL");

    const name = config.keyName;
    await createKey(page, { name, models: config.model, rpm: "100" });
    await waitFor("the new key", () => visible(page, "#new-key"));
    const key = await page.inputValue("#new-key-value");
    check(key.startsWith("sk-"), `the new key looks wrong: ${key}`);
    check(
      (await text(page, "#new-key")).includes("will not be shown again"),
      "no warning that the key is shown once",
    );
    await page.click("#new-key-copy");
    await waitFor("the copy confirmation", async () => (await text(page, "#new-key-copied")) !== "");
    await snap(page, "keys");
    await page.click("#new-key-dismiss");
    const row = await keyRow(page, name);
    await waitFor("the new key's row", async () => (await row.count()) === 1);
    check((await row.textContent()).includes("100 rpm"), "the key's row does not show its rpm");
    await assertLabelled(page);

    // Filtered by text, then sorted by name both ways.
    await page.fill("#keys-filter", name);
    await waitFor("the filter", async () => (await page.locator("#keys-table tbody tr").count()) === 1);
    await page.fill("#keys-filter", "");
    const names = () =>
      page.locator("#keys-table tbody tr[data-name]").evaluateAll((rows) => rows.map((r) => r.dataset.name));
    const nameHeader = page.locator('#keys-table th[data-sort="name"]');
    await nameHeader.locator("button").click();
    check((await nameHeader.getAttribute("aria-sort")) === "ascending", "no ascending sort by name");
    const ascending = await names();
    check(
      JSON.stringify(ascending) === JSON.stringify([...ascending].sort((a, b) => a.localeCompare(b))),
      `not sorted by name: ${ascending}`,
    );
    await nameHeader.locator("button").press("Enter");
    check((await nameHeader.getAttribute("aria-sort")) === "descending", "no descending sort by name");
    check(JSON.stringify(await names()) === JSON.stringify([...ascending].reverse()), "not sorted back");

    // Used through the gateway's HTTP port, as a client would.
    const first = await chat(key, config.model);
    check(first.status === 200, `chat with the new key: ${first.status} ${JSON.stringify(first.body)}`);
    const tokens = first.body.usage.total_tokens;

    await openUsage(page);
    await page.selectOption("#usage-scope", name);
    const usage = await usageRow(page, config.model, 1);
    check(Number(usage.requests) === 1, `usage shows ${usage.requests} requests, not 1`);
    check(Number(usage.tokens) === tokens, `usage shows ${usage.tokens} tokens, the answer said ${tokens}`);
    const ledger = await admin("GET", `/v1/admin/usage?group_by=key&key=${encodeURIComponent(name)}`);
    const cost = ledger.data[0].cost_usd;
    check(cost > 0, `the request has no cost in the ledger: ${JSON.stringify(ledger)}`);
    check(Number(usage.costUsd) === cost, `the chart's cost ${usage.costUsd} is not the ledger's ${cost}`);
    const topKeys = await page.locator("#top-keys-table tbody tr").evaluateAll((nodes) =>
      nodes.map((node) => node.dataset.key),
    );
    check(topKeys.includes(name), `the top keys table lacks ${name}: ${topKeys}`);
    const download = page.waitForEvent("download");
    await page.click("#usage-csv");
    const csvPath = await (await download).path();
    const csv = readFileSync(csvPath, "utf-8");
    check(csv.startsWith("key,day,model,requests"), `the CSV's header: ${csv.slice(0, 80)}`);
    check(csv.includes(`${name},${usage.day},${config.model},1,`), `the CSV lacks the request: ${csv}`);
    await snap(page, "usage");
    if (config.screenshot) {
      await page.selectOption("#usage-scope", "");
      await waitFor("the whole gateway's usage", () =>
        page.locator("#usage-view").evaluate((node) => node.dataset.state === "loaded"),
      );
      // What a laptop screen shows: the controls and the four charts.
      await page.screenshot({ path: config.screenshot });
    }

    await page.click("#nav-keys");
    await signedIn(page);
    await row.getByRole("button", { name: `Edit limits of ${name}` }).click();
    await waitFor("the edit dialog", () => visible(page, "#edit-dialog"));
    await page.fill("#edit-rpm", "7");
    await page.fill("#edit-budget-usd", "5");
    await page.click("#edit-save");
    await waitFor("the dialog to close", async () => !(await visible(page, "#edit-dialog")));
    await waitFor("the new rpm in the table", async () => (await row.textContent()).includes("7 rpm"));
    const record = await admin("GET", `/v1/admin/keys/${name}`);
    check(record.rpm === 7 && record.budget_usd === 5, `the API has ${JSON.stringify(record)}`);

    // An API error shows in place, as the API's message.
    await row.getByRole("button", { name: `Edit limits of ${name}` }).click();
    await page.fill("#edit-models", "no-such-model");
    await page.click("#edit-save");
    await waitFor("the API's error in the dialog", async () =>
      (await text(page, "#edit-error")).includes("Not in the model catalog: no-such-model"),
    );
    await page.keyboard.press("Escape");
    await waitFor("the dialog to close", async () => !(await visible(page, "#edit-dialog")));

    await row.getByRole("button", { name: `Revoke ${name}` }).click();
    await waitFor("the confirmation", () => visible(page, "#revoke-dialog"));
    await snap(page, "revoke");
    await page.click("#revoke-confirm");
    await waitFor("the key to leave the active keys", async () => (await row.count()) === 0);
    const refused = await waitFor("the revoked key to be refused", async () => {
      const answer = await chat(key, config.model);
      return answer.status !== 200 && answer;
    });
    check(refused.status === 403, `the revoked key got ${refused.status}`);

    await page.setViewportSize(PHONE);
    await assertFitsWidth(page);
    await openUsage(page);
    await assertFitsWidth(page);
    await snap(page, "usage-phone");

    await page.click("#sign-out");
    await waitFor("the sign-in page", () => visible(page, "#sign-in-view"));
    check((await page.evaluate(() => sessionStorage.length)) === 0, "the key outlived sign-out");
    await assertClean(page);
    return { key_prefix: key.slice(0, 8), tokens, cost_usd: cost, refused: refused.status };
  },

  /** A wrong key, then a key that stops working mid-session: back to sign-in, with the reason. */
  async "wrong-key"(browser) {
    const page = await openConsole(browser);
    await signIn(page, "sk-not-the-admin-key-0123456789");
    await waitFor("the API's refusal", async () => (await text(page, "#sign-in-error")) !== "");
    const refusal = await text(page, "#sign-in-error");
    check(await visible(page, "#sign-in-view"), "a wrong key got past sign-in");
    check((await page.evaluate(() => sessionStorage.length)) === 0, "a wrong key was kept");
    await snap(page, "wrong-key");

    await signIn(page, config.adminKey);
    await signedIn(page);
    // The key changes under the page (as when the operator rotates GATEWAY_ADMIN_KEY).
    await page.evaluate(() => {
      for (const name of Object.keys(sessionStorage)) sessionStorage.setItem(name, "sk-rotated-away-0123456789");
    });
    await page.click("#keys-refresh");
    await waitFor("the sign-in page", () => visible(page, "#sign-in-view"));
    const expired = await text(page, "#sign-in-error");
    check((await page.evaluate(() => sessionStorage.length)) === 0, "a refused key was kept");
    await assertClean(page);
    return { refusal, expired };
  },

  /** No GATEWAY_ADMIN_KEY: the page says so, before and after a key is tried. */
  async "admin-off"(browser) {
    const page = await openConsole(browser);
    await waitFor("the admin API's message", async () => (await text(page, "#sign-in-error")) !== "");
    const before = await text(page, "#sign-in-error");
    await signIn(page, "anything-at-all-0123456789");
    await waitFor("the refusal", async () => (await text(page, "#sign-in-error")) !== "");
    const after = await text(page, "#sign-in-error");
    check(await visible(page, "#sign-in-view"), "got past sign-in with the admin API off");
    await snap(page, "admin-off");
    await assertClean(page);
    return { before, after };
  },

  /** Hostile text from the API (an error quoting the request, a model name of the operator's
   * catalog) shows as text; nothing runs. */
  async xss(browser) {
    const page = await openConsole(browser);
    await signIn(page, config.adminKey);
    await signedIn(page);
    const hostile = config.hostileModel;

    // An API error that quotes what was sent.
    await createKey(page, { name: `${config.keyName}-x`, models: config.hostileUnknown });
    await waitFor("the API's error", async () => (await text(page, "#create-error")).includes("Not in the model catalog"));
    const error = await text(page, "#create-error");
    check(error.includes(config.hostileUnknown), `the error does not quote the text: ${error}`);

    // A catalog model with markup in its name, on a key and in the usage data.
    await createKey(page, { name: config.keyName, models: hostile });
    await waitFor("the new key", () => visible(page, "#new-key"));
    const key = await page.inputValue("#new-key-value");
    await page.click("#new-key-dismiss");
    const row = await keyRow(page, config.keyName);
    await waitFor("the key's row", async () => (await row.count()) === 1);
    check((await row.textContent()).includes(hostile), "the model name is not shown as text");
    const answer = await chat(key, hostile);
    check(answer.status === 200, `chat with the hostile model: ${answer.status} ${JSON.stringify(answer.body)}`);
    await openUsage(page);
    const usage = await usageRow(page, hostile, 1);
    check(usage.text.includes(hostile), "the usage table does not show the model name as text");
    await snap(page, "xss");

    const ran = await page.evaluate(() => ({
      flag: window.__xss ?? null,
      injected: document.querySelectorAll("main img, main script:not([src]), dialog img").length,
    }));
    check(ran.flag === null, "the hostile markup ran");
    check(ran.injected === 0, "the hostile markup became elements");
    await assertClean(page);
    return { error, ran };
  },
};

// --- run -------------------------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: config.chromium,
  // Root (CI containers) needs it; the page is the test's own.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let exitCode = 0;
try {
  const run = scenarios[scenario];
  check(run, `unknown scenario ${scenario}`);
  const result = await run(browser);
  console.log(JSON.stringify({ scenario, ...result }));
} catch (error) {
  exitCode = 1;
  console.error(`${scenario}: ${error.stack || error}`);
  if (problems.length) console.error(`browser reported:\n${problems.join("\n")}`);
  if (config.artifacts) {
    // Each page the scenario saw, and each as it was when the scenario failed.
    mkdirSync(config.artifacts, { recursive: true });
    for (const [name, shot] of shots) writeFileSync(path.join(config.artifacts, `${scenario}-${name}.png`), shot);
    for (const context of browser.contexts()) {
      for (const [index, page] of context.pages().entries()) {
        await page
          .screenshot({ path: path.join(config.artifacts, `${scenario}-failed-${index}.png`), fullPage: true })
          .catch(() => {});
      }
    }
  }
} finally {
  await browser.close();
}
process.exit(exitCode);
