// The admin REST API, with the admin key of this tab. The key lives in sessionStorage only:
// never in a URL, a cookie or local storage, so it goes when the tab closes.

const STORAGE_KEY = "typegpt-gateway.admin-key";

export class ApiError extends Error {
  constructor(status, message, type) {
    super(message);
    this.status = status;
    this.type = type;
  }

  /** The key is wrong, expired, a client key, or the admin API is off: back to sign-in. */
  get refusesTheKey() {
    return this.status === 401 || this.status === 403;
  }
}

export function adminKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function signIn(key) {
  sessionStorage.setItem(STORAGE_KEY, key);
}

export function signOut() {
  sessionStorage.removeItem(STORAGE_KEY);
}

/**
 * Calls the admin API and returns its JSON; an error answer throws ApiError with the API's own
 * message. `key: null` sends no key (to learn whether the admin API is on at all).
 */
export async function call(method, path, { body, key = adminKey() } = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (error) {
    throw new ApiError(0, `The gateway could not be reached (${error.message}).`, "api_error");
  }
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const problem = payload && payload.error;
    const message =
      problem && typeof problem.message === "string"
        ? problem.message
        : `The request failed with HTTP status ${response.status}.`;
    throw new ApiError(response.status, message, problem && problem.type);
  }
  return payload;
}

export const keyPath = (name) => `/v1/admin/keys/${encodeURIComponent(name)}`;

export function usagePath({ since, groupBy, key }) {
  const query = new URLSearchParams({ since, group_by: groupBy });
  if (key) query.set("key", key);
  return `/v1/admin/usage?${query}`;
}
