// The session and every call to the API: a short-lived JWT from the OAuth2 token endpoint,
// kept in sessionStorage (gone with the tab), sent as Bearer; a 401 ends the session.

const KEY = "dafnck.session";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
  toString() {
    return `${this.status} ${this.type}: ${this.message}`;
  }
}

let expired = false;

export const session = {
  get() {
    const raw = sessionStorage.getItem(KEY);
    const value = raw ? JSON.parse(raw) : null;
    if (value && value.expiresAt <= Date.now()) {
      sessionStorage.removeItem(KEY);
      expired = true;
      return null;
    }
    return value;
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
  /** Did a session end by its lifetime since the last call? */
  expired() {
    const was = expired;
    expired = false;
    return was;
  },
};

/** May the logged-in role take `action` (e.g. "agents:write")? The server checks anyway. */
export function can(action) {
  const current = session.get();
  return Boolean(current && current.me.permissions.includes(action));
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && body.error ? body.error : {};
  return new ApiError(response.status, error.type || "HTTPError", error.message || response.statusText);
}

/** Log in with the password grant (and a TOTP code when the user has one). */
export async function login({ tenant, username, password, totp }) {
  const form = new URLSearchParams({ grant_type: "password", tenant, username, password });
  if (totp) form.set("totp_code", totp);
  const response = await fetch("/v1/auth/token", { method: "POST", body: form });
  if (!response.ok) throw await errorOf(response);
  const token = await response.json();
  const meResponse = await fetch("/v1/me", {
    headers: { Authorization: `Bearer ${token.access_token}` },
  });
  if (!meResponse.ok) throw await errorOf(meResponse);
  const me = await meResponse.json();
  const value = { token: token.access_token, expiresAt: Date.now() + token.expires_in * 1000, me };
  sessionStorage.setItem(KEY, JSON.stringify(value));
  return value;
}

/** Listeners told when the session ends (expired, refused or logged out). */
const ended = new Set();
export function onSessionEnd(listener) {
  ended.add(listener);
}
export function endSession(reason) {
  session.clear();
  for (const listener of ended) listener(reason);
}

/** Call the API; resolves to the JSON body, rejects with an ApiError naming the problem. */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const current = session.get();
  if (!current) {
    endSession("Your session has expired: log in again.");
    throw new ApiError(401, "Unauthorized", "session expired");
  }
  const init = { method, headers: { Authorization: `Bearer ${current.token}`, ...headers } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    endSession("Your session has expired: log in again.");
    throw await errorOf(response);
  }
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

/** A URL with the token as `access_token`: browsers can't set headers on a WebSocket. */
export function socketUrl(path, params = {}) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const current = session.get();
  if (current) url.searchParams.set("access_token", current.token);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, value);
  }
  return url.toString();
}
