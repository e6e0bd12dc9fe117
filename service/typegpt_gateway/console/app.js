// The console's entry point: sign-in, sign-out, and switching between the Keys and Usage pages.
import { ApiError, adminKey, call, signIn, signOut } from "./api.js";
import { byId, say } from "./dom.js";
import { KeysPage } from "./keys.js";
import { UsagePage } from "./usage.js";

const views = {
  signIn: byId("sign-in-view"),
  keys: byId("keys-view"),
  usage: byId("usage-view"),
};
const tabs = { keys: byId("nav-keys"), usage: byId("nav-usage") };
const nav = byId("nav");

/** Any refusal of the key (wrong, revoked, admin API off) ends the session with its message. */
function onApiError(error) {
  if (error instanceof ApiError && error.refusesTheKey) {
    showSignIn(error.message);
    return true;
  }
  return false;
}

const keysPage = new KeysPage({ onApiError });
const usagePage = new UsagePage({ onApiError, keyNames: () => keysPage.names() });

function showOnly(view) {
  for (const node of Object.values(views)) node.hidden = node !== view;
}

function showSignIn(message) {
  signOut();
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  nav.hidden = true;
  showOnly(views.signIn);
  say(byId("sign-in-error"), message);
  const input = byId("admin-key");
  input.value = "";
  input.focus();
}

async function showPage(name) {
  nav.hidden = false;
  for (const [tab, button] of Object.entries(tabs)) {
    if (tab === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  showOnly(views[name]);
  // The page's place survives a reload; the key never goes into the URL.
  history.replaceState(null, "", `#${name}`);
  if (name === "keys") await keysPage.load();
  else await usagePage.load();
}

byId("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = byId("admin-key");
  const key = input.value.trim();
  const error = byId("sign-in-error");
  if (!key) {
    say(error, "Enter the admin key.");
    return;
  }
  try {
    // Checked before it is kept: a wrong key gets the API's own message here.
    await call("GET", "/v1/admin/keys", { key });
  } catch (failure) {
    say(error, failure.message);
    input.select();
    return;
  }
  signIn(key);
  input.value = "";
  say(error, "");
  await showPage(location.hash === "#usage" ? "usage" : "keys");
});

byId("sign-out").addEventListener("click", () => showSignIn(""));
tabs.keys.addEventListener("click", () => showPage("keys"));
tabs.usage.addEventListener("click", () => showPage("usage"));

async function start() {
  if (adminKey()) {
    await showPage(location.hash === "#usage" ? "usage" : "keys");
    return;
  }
  showSignIn("");
  // Without a key the API says whether it is on at all: when it is off, say so before anyone
  // types a key.
  try {
    await call("GET", "/v1/admin/keys", { key: null });
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) say(byId("sign-in-error"), error.message);
  }
}

start();
