// Tessera's HTTP API as the UI calls it: JSON in and out, the operator's API key (if any) as
// `Authorization: Bearer`, errors as ApiError with the server's status and message.

const KEY = "tessera.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() { return sessionStorage.getItem(KEY); }
export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
}

async function call(method, path, body) {
  const headers = { accept: "application/json" };
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  if (!resp.ok) {
    let message = text;
    try { message = JSON.parse(text).error.message; } catch { /* not Tessera's JSON error */ }
    throw new ApiError(resp.status, `${resp.status}: ${message}`);
  }
  return text;
}

export async function getJSON(path) { return JSON.parse(await call("GET", path)); }
export async function postJSON(path, body) { return JSON.parse(await call("POST", path, body)); }
export async function getText(path) { return call("GET", path); }

/** A path segment: a group name or record id as the route expects it. */
export const seg = (s) => encodeURIComponent(s);

export const quoteIdent = (name) => `"${String(name).replaceAll('"', '""')}"`;
export const quoteLiteral = (text) => `'${String(text).replaceAll("'", "''")}'`;

/** POST /v1/sql: rows as objects keyed by column. */
export async function sql(query, maxRows = 1000) {
  const out = await postJSON("/v1/sql", { query, format: "json", max_rows: maxRows });
  return out.rows.map((row) => Object.fromEntries(out.columns.map((c, i) => [c, row[i]])));
}

/** /metrics parsed: [{name, labels, value}] (Prometheus text format, one sample a line). */
export async function metrics() {
  const text = await getText("/metrics");
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(label)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

/** The sum of a metric's samples, grouped by the labels named (with --workers N every process
 * reports its own samples, labelled `process`: they add up). */
export function sumBy(samples, name, keys) {
  const out = new Map();
  for (const s of samples) {
    if (s.name !== name) continue;
    const k = JSON.stringify(keys.map((key) => s.labels[key] ?? ""));
    out.set(k, (out.get(k) || 0) + s.value);
  }
  return [...out].map(([k, v]) => ({ key: JSON.parse(k), value: v }));
}
