// The UI's pages. Each renders into `main` from the HTTP API: what the caller may read.
import { getJSON, metrics, postJSON, quoteIdent, quoteLiteral, seg, sql, sumBy } from "./api.js";
import { bars, fmt, histograms } from "./charts.js";

/** An element: h("td", {class: "num"}, child, ...) (text children are text nodes: never HTML). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => {
      const [text, cls] = Array.isArray(x) ? x : [x, null];
      return h("th", { class: cls }, text);
    }))),
    h("tbody", {}, rows));
}

const num = (x, attrs = {}) => h("td", { class: "num", ...attrs }, fmt(x));

function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 0) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function ttl(def) {
  const d = def.online_store_config && def.online_store_config.ttl_duration;
  return d ? `${d.value} ${d.unit}` : "none";
}

function typeOf(f) {
  const base = f.feature_type;
  if (!f.collection_type) return base;
  if (f.collection_type === "Vector") {
    const dim = f.collection_config && f.collection_config.vector_config
      ? f.collection_config.vector_config.dimension : "?";
    return `Vector<${base}>[${dim}]`;
  }
  return `${f.collection_type}<${base}>`;
}

const flag = (on, text) => h("span", { class: on ? "tag" : "tag off" }, `${text} ${on ? "on" : "off"}`);
const definitionOf = (g) => g;  // describe() answers the definition's fields at the top level
const isOnline = (d) => !d.online_store_config || d.online_store_config.enable_online_store !== false;
const isOffline = (d) => !d.offline_store_config || d.offline_store_config.enable_offline_store !== false;

async function optional(promise) {
  try { return await promise; } catch { return null; }  // e.g. /metrics protected: shown as –
}

async function groupNames() {
  return (await getJSON("/v1/feature-groups")).feature_groups.map((g) => g.feature_group_name);
}

function groupSelect(names, selected) {
  return h("select", { name: "group", id: "group" },
    names.map((n) => h("option", { value: n, selected: n === selected }, n)));
}

// --- feature groups --------------------------------------------------------------------------

export async function groupsPage(main) {
  const [list, offline, samples] = await Promise.all([
    getJSON("/v1/feature-groups"), optional(getJSON("/v1/offline-store")), optional(metrics()),
  ]);
  const written = (s) => new Map((s ? sumBy(s, "tessera_records_written_total",
    ["feature_group"]) : []).map((r) => [r.key[0], r.value]));
  const before = written(samples);
  const t0 = performance.now();
  const search = h("input", { type: "search", id: "search", placeholder: "Search groups",
                              value: "" });
  const rows = list.feature_groups.map((g) => {
    const d = definitionOf(g);
    const off = offline && offline.groups[g.feature_group_name];
    const last = off && off.last_write;
    const row = h("tr", { "data-group": g.feature_group_name },
      h("td", {}, h("a", { href: `#/group/${seg(g.feature_group_name)}` }, g.feature_group_name),
        d.description ? h("div", { class: "muted" }, d.description) : null),
      num(d.feature_definitions.length),
      h("td", {}, flag(isOnline(d), "online"), flag(isOffline(d), "offline")),
      h("td", {}, ttl(d)),
      num(off ? off.rows : null, { "data-col": "rows" }),
      num(samples ? (before.get(g.feature_group_name) || 0) : null, { "data-col": "written" }),
      h("td", { class: "num", "data-col": "rate" }, samples ? "…" : "–"),
      h("td", { title: last || "", "data-col": "last-write" }, ago(last)),
      num(g.version));
    return row;
  });
  const body = table(["Group", ["Features", "num"], "Stores", "TTL", ["History rows", "num"],
                      ["Records written", "num"], ["Writes/s", "num"], "Last write", ["Version", "num"]],
                     rows, { id: "groups" });
  search.addEventListener("input", () => {
    const q = search.value.toLowerCase();
    for (const r of rows) r.hidden = !r.dataset.group.toLowerCase().includes(q);
  });
  main.replaceChildren(
    h("h1", {}, "Feature groups"),
    h("form", { class: "bar", onsubmit: (e) => e.preventDefault() }, search),
    list.feature_groups.length ? body : h("p", { class: "muted" }, "No feature groups you may read."),
    h("p", { class: "muted" }, "History rows: rows in the offline store (every write). Records "
      + "written: online writes applied since the server started. Last write: the newest "
      + "write_time flushed to the offline store."));
  if (!samples) return;
  // The write rate: the records-written counter's increase over two seconds.
  await new Promise((r) => setTimeout(r, 2000));
  const after = written(await optional(metrics()));
  const dt = (performance.now() - t0) / 1000;
  for (const r of rows) {
    const name = r.dataset.group;
    const rate = ((after.get(name) || 0) - (before.get(name) || 0)) / dt;
    r.querySelector('[data-col="rate"]').textContent = fmt(Number(Math.max(rate, 0).toFixed(1)));
    r.querySelector('[data-col="written"]').textContent = fmt(after.get(name) || 0);
  }
}

export async function groupPage(main, { arg }) {
  const g = await getJSON(`/v1/feature-groups/${seg(arg)}`);
  const d = definitionOf(g);
  const features = table(["Feature", "Type", "Description", "Role"],
    d.feature_definitions.map((f) => h("tr", { "data-feature": f.feature_name },
      h("td", {}, f.feature_name), h("td", {}, typeOf(f)), h("td", {}, f.description || ""),
      h("td", {}, f.feature_name === d.record_identifier_feature_name ? h("span", { class: "tag" }, "record id")
        : f.feature_name === d.event_time_feature_name ? h("span", { class: "tag" }, "event time") : ""))),
    { id: "features" });
  const aggs = d.aggregations && d.aggregations.length
    ? table(["Aggregation", "Function", "Source", "Window", "Key / n"],
      d.aggregations.map((a) => h("tr", {}, h("td", {}, a.name), h("td", {}, a.function),
        h("td", {}, a.source || ""), h("td", {}, a.window),
        h("td", {}, a.key || (a.n === null || a.n === undefined ? "" : String(a.n))))))
    : h("p", { class: "muted" }, "No aggregation features.");
  const when = (t) => (t ? new Date(t * 1000).toISOString() : "–");
  main.replaceChildren(h("div", {},  // h() leaves out null children; replaceChildren would not
    h("h1", {}, d.feature_group_name),
    d.description ? h("p", {}, d.description) : null,
    g.quarantined ? h("p", { class: "error" }, `Quarantined: ${g.quarantined}`) : null,
    h("dl", { class: "kv card" },
      h("dt", {}, "Record identifier"), h("dd", {}, d.record_identifier_feature_name),
      h("dt", {}, "Event time"), h("dd", {}, d.event_time_feature_name),
      h("dt", {}, "Stores"), h("dd", {}, flag(isOnline(d), "online"), flag(isOffline(d), "offline")),
      h("dt", {}, "TTL"), h("dd", {}, ttl(d)),
      h("dt", {}, "Schema version"), h("dd", { id: "version" }, String(g.version)),
      h("dt", {}, "Created"), h("dd", {}, when(g.creation_time)),
      h("dt", {}, "Last modified"), h("dd", {}, when(g.last_modified_time)),
      h("dt", {}, "Tags"), h("dd", {}, (d.tags || []).map((t) => h("span", { class: "tag" }, `${t.key}=${t.value}`)))),
    h("p", {},
      h("a", { href: `#/record?group=${seg(arg)}` }, "Look up a record"), " · ",
      h("a", { href: `#/stats?group=${seg(arg)}` }, "Statistics"), " · ",
      h("a", { href: `#/drift?group=${seg(arg)}` }, "Drift")),
    h("h2", {}, "Features"), features,
    h("h2", {}, "Aggregations"), aggs));
}

// --- record lookup ----------------------------------------------------------------------------

export async function recordPage(main, { params }) {
  const names = await groupNames();
  const group = params.get("group") || names[0];
  const id = params.get("id") || "";
  const input = h("input", { name: "id", id: "record-id", value: id, placeholder: "record id" });
  const select = groupSelect(names, group);
  const form = h("form", { class: "bar", id: "lookup" },
    h("label", {}, "Feature group", select), h("label", {}, "Record id", input),
    h("button", { type: "submit" }, "Look up"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/record?group=${seg(select.value)}&id=${seg(input.value)}`;
  });
  main.replaceChildren(h("h1", {}, "Record lookup"), form);
  if (!group || !id) return;
  const out = h("div", { id: "record-result" });
  main.append(out);
  // batchGet answers a missing id in `missing` (a GET's 404 would be a console error)
  const found = await postJSON(`/v1/feature-groups/${seg(group)}/records:batchGet`, { record_ids: [id] });
  const online = found.records.length ? found.records[0] : null;
  out.append(h("h2", {}, "Online record"));
  if (online) {
    out.append(table(["Feature", "Value"], Object.entries(online.record).map(([k, v]) =>
      h("tr", { "data-feature": k }, h("td", {}, k), h("td", { class: "value" },
        typeof v === "string" ? v : JSON.stringify(v)))), { id: "online" }),
      h("p", {}, "Expires: ", h("span", { id: "expires" }, online.expires_at || "never")));
  } else {
    out.append(h("p", { class: "muted", id: "online-missing" }, `No online record '${id}' in ${group} (never written, deleted or expired).`));
  }
  const g = await getJSON(`/v1/feature-groups/${seg(group)}`);
  out.append(h("h2", {}, "Recent history (offline store)"));
  let rows;
  try {
    rows = await sql(`SELECT * FROM ${quoteIdent(group)} WHERE ${quoteIdent(g.record_identifier_feature_name)} = `
      + `${quoteLiteral(id)} ORDER BY write_time DESC LIMIT 20`, 20);
  } catch (err) {
    out.append(h("p", { class: "error" }, err.message));
    return;
  }
  if (!rows.length) {
    out.append(h("p", { class: "muted" }, "No history rows flushed yet."));
    return;
  }
  const cols = ["write_time", "is_deleted", ...g.feature_definitions.map((f) => f.feature_name)];
  out.append(table(cols, rows.map((r) => h("tr", {}, cols.map((c) => h("td", {},
    r[c] === null || r[c] === undefined ? "–" : typeof r[c] === "string" ? r[c] : JSON.stringify(r[c]))))),
    { id: "history" }));
}

// --- offline store ----------------------------------------------------------------------------

export async function offlinePage(main, { who }) {
  const [store, samples] = await Promise.all([getJSON("/v1/offline-store"), optional(metrics())]);
  const backlog = samples ? sumBy(samples, "tessera_offline_outbox_pending_rows", []) : [];
  const pending = backlog.length ? backlog[0].value : null;
  const cards = Object.entries(store.groups).map(([name, g]) => {
    const result = h("p", { class: "muted", "data-role": "compact-result" });
    const button = who.admin && g.files > 0 ? h("button", {
      "data-role": "compact", onclick: async () => {
        button.disabled = true;
        result.textContent = "compacting…";
        try {
          const r = await postJSON(`/v1/feature-groups/${seg(name)}/compact`);
          result.textContent = `compacted: ${JSON.stringify(r)}`;
        } catch (err) {
          result.textContent = err.message;
        }
        button.disabled = false;
      },
    }, "Compact") : null;
    return h("div", { class: "card", "data-group": name },
      h("h3", {}, name),
      h("dl", { class: "kv" },
        h("dt", {}, "Partitions"), h("dd", {}, fmt(g.partitions.length)),
        h("dt", {}, "Files"), h("dd", { "data-col": "files" }, fmt(g.files)),
        h("dt", {}, "Rows"), h("dd", { "data-col": "rows" }, fmt(g.rows)),
        h("dt", {}, "Bytes"), h("dd", {}, fmt(g.bytes)),
        h("dt", {}, "Last flush"), h("dd", { title: g.last_flush || "" }, ago(g.last_flush)),
        h("dt", {}, "Last write"), h("dd", { title: g.last_write || "" }, ago(g.last_write))),
      g.partitions.length ? table(["event_date", ["files", "num"], ["rows", "num"], ["bytes", "num"]],
        g.partitions.map((p) => h("tr", {}, h("td", {}, p.event_date), num(p.files), num(p.rows), num(p.bytes))))
        : null,
      button, result);
  });
  main.replaceChildren(
    h("h1", {}, "Offline store"),
    h("p", {}, "Root: ", h("code", {}, store.root || "not a local folder"), " · outbox backlog: ",
      h("strong", { id: "outbox" }, pending === null ? "–" : `${fmt(pending)} rows`)),
    cards.length ? h("div", { class: "cards" }, cards) : h("p", { class: "muted" }, "No offline groups you may read."));
}

// --- ingestion --------------------------------------------------------------------------------

export async function ingestPage(main) {
  const [samples, letters] = await Promise.all([metrics(), optional(getJSON("/v1/ingest/dead-letters"))]);
  const lag = sumBy(samples, "tessera_ingest_consumer_lag", ["topic", "partition"]);
  const records = sumBy(samples, "tessera_ingest_records_total", ["topic", "feature_group"]);
  const dead = sumBy(samples, "tessera_ingest_dead_letters_total", ["topic", "error_class"]);
  const paused = sumBy(samples, "tessera_ingest_paused", ["topic"]);
  const fsum = new Map(sumBy(samples, "tessera_ingest_freshness_seconds_sum", ["feature_group"]).map((r) => [r.key[0], r.value]));
  const fcount = sumBy(samples, "tessera_ingest_freshness_seconds_count", ["feature_group"]);
  const consumers = new Set(samples.filter((s) => s.name.startsWith("tessera_ingest_")).map((s) => s.labels.process).filter(Boolean));
  main.replaceChildren(h("h1", {}, "Ingestion"));
  if (!records.length && !lag.length) {
    main.append(h("p", { class: "muted", id: "no-ingest" }, "No Kafka consumer reports to this server "
      + "(start one with tessera serve --kafka-… or tessera ingest)."));
    return;
  }
  main.append(
    h("p", {}, `Consumer processes: ${consumers.size || 1}`),
    h("h2", {}, "Topics"),
    table(["Topic", "Feature group", ["Records", "num"], "Paused"], records.map((r) => h("tr", {},
      h("td", {}, r.key[0]), h("td", {}, r.key[1]), num(r.value),
      h("td", {}, (paused.find((p) => p.key[0] === r.key[0]) || { value: 0 }).value ? "paused" : "no"))), { id: "topics" }),
    h("h2", {}, "Lag per partition"),
    table(["Topic", "Partition", ["Lag (messages)", "num"]], lag.map((r) => h("tr", {},
      h("td", {}, r.key[0]), h("td", {}, r.key[1]), num(r.value))), { id: "lag" }),
    h("h2", {}, "Dead letters"),
    dead.length ? table(["Topic", "Reason (error class)", ["Messages", "num"]], dead.map((r) => h("tr", {},
      h("td", {}, r.key[0]), h("td", {}, r.key[1]), num(r.value))), { id: "dead" })
      : h("p", { class: "muted" }, "None."),
    ...(letters && letters.dead_letters.length ? [
      h("h3", {}, "Latest dead letters"),
      table(["Failed at", "Topic", "Partition/offset", "Class", "Reason"], letters.dead_letters.map((d) =>
        h("tr", {}, h("td", {}, d.failed_at || ""), h("td", {}, d.topic || ""),
          h("td", {}, `${d.partition}/${d.offset}`), h("td", {}, d.error_class || ""),
          h("td", {}, d.reason || ""))), { id: "latest-dead" })] : []),
    h("h2", {}, "Freshness (event time to durable)"),
    table(["Feature group", ["Mean (s)", "num"], ["Records", "num"]], fcount.map((r) => h("tr", {},
      h("td", {}, r.key[0]), num(r.value ? (fsum.get(r.key[0]) || 0) / r.value : null), num(r.value)))));
}

// --- statistics and drift ---------------------------------------------------------------------

const isoInput = (d) => d.toISOString().slice(0, 16);
const toIso = (v) => `${v}:00Z`;  // the inputs are UTC, minute precision

function windowInputs(params, prefix, defaults) {
  const start = h("input", { type: "datetime-local", name: `${prefix}start`, id: `${prefix}start`,
    value: params.get(`${prefix}start`) || isoInput(defaults[0]) });
  const end = h("input", { type: "datetime-local", name: `${prefix}end`, id: `${prefix}end`,
    value: params.get(`${prefix}end`) || isoInput(defaults[1]) });
  return [start, end];
}

function summary(kind, s) {
  const dl = h("dl", { class: "kv" });
  const add = (k, v) => dl.append(h("dt", {}, k), h("dd", { "data-stat": k }, fmt(v)));
  add("count", s.count);
  add("nulls", s.nulls);
  const n = kind === "list" ? s.length : kind === "vector" ? s.norm : s;
  if (s.distinct !== undefined) add("distinct", s.distinct);
  if (kind !== "string" && n) {
    const prefix = kind === "list" ? "length " : kind === "vector" ? "norm " : "";
    for (const k of ["min", "max", "mean", "stddev"]) add(prefix + k, n[k]);
  }
  return dl;
}

function chartOf(name, s, other) {
  const kind = s.type;
  if (kind === "string") {
    const keys = Object.keys(s.top || {});
    if (other) for (const k of Object.keys(other.top || {})) if (!keys.includes(k)) keys.push(k);
    const total = (t) => Object.values(t || {}).reduce((a, b) => a + b, 0) || 1;
    return bars(keys.slice(0, 12).map((k) => ({ label: k, values: other
      ? [(other.top[k] || 0) / total(other.top), (s.top[k] || 0) / total(s.top)]
      : [s.top[k]] })), { label: `${name} top values` });
  }
  const pick = (x) => (x.type === "list" ? x.length : x.type === "vector" ? x.norm : x) || {};
  const series = [{ ...(pick(s).histogram || {}), cls: other ? "b" : "" }];
  if (other) series.unshift({ ...(pick(other).histogram || {}), cls: "" });
  return histograms(series, { shares: Boolean(other), label: `${name} histogram` });
}

export async function statsPage(main, { params }) {
  const names = await groupNames();
  const group = params.get("group") || names[0];
  const now = new Date();
  const [start, end] = windowInputs(params, "", [new Date(now - 7 * 864e5), new Date(+now + 36e5)]);
  const select = groupSelect(names, group);
  const form = h("form", { class: "bar" }, h("label", {}, "Feature group", select),
    h("label", {}, "From (UTC)", start), h("label", {}, "To (UTC)", end), h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/stats?group=${seg(select.value)}&start=${start.value}&end=${end.value}`;
  });
  main.replaceChildren(h("h1", {}, "Statistics"), form);
  if (!group) return;
  const q = `start=${encodeURIComponent(toIso(start.value))}&end=${encodeURIComponent(toIso(end.value))}`;
  let stats;
  try {
    stats = await getJSON(`/v1/feature-groups/${seg(group)}/statistics?${q}`);
  } catch (err) {  // e.g. 422 for a window that ends before it starts: keep the form
    main.append(h("p", { class: "error" }, err.message));
    return;
  }
  main.append(h("div", { class: "cards", id: "stats" }, Object.entries(stats.features).map(([name, s]) =>
    h("div", { class: "card", "data-feature": name }, h("h3", {}, name, " ", h("span", { class: "tag" }, s.type)),
      summary(s.type, s), chartOf(name, s)))));
}

export async function driftPage(main, { params }) {
  const names = await groupNames();
  const group = params.get("group") || names[0];
  const now = new Date();
  const [bStart, bEnd] = windowInputs(params, "baseline_", [new Date(now - 14 * 864e5), new Date(now - 7 * 864e5)]);
  const [start, end] = windowInputs(params, "", [new Date(now - 7 * 864e5), new Date(+now + 36e5)]);
  const select = groupSelect(names, group);
  const form = h("form", { class: "bar" }, h("label", {}, "Feature group", select),
    h("label", {}, "Baseline from", bStart), h("label", {}, "Baseline to", bEnd),
    h("label", {}, "From (UTC)", start), h("label", {}, "To (UTC)", end), h("button", { type: "submit" }, "Compare"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/drift?group=${seg(select.value)}&baseline_start=${bStart.value}`
      + `&baseline_end=${bEnd.value}&start=${start.value}&end=${end.value}`;
  });
  main.replaceChildren(h("h1", {}, "Drift"), form);
  if (!group) return;
  const w = (a, b) => `start=${encodeURIComponent(toIso(a.value))}&end=${encodeURIComponent(toIso(b.value))}`;
  const base = `/v1/feature-groups/${seg(group)}`;
  const answers = Promise.all([
    getJSON(`${base}/drift?baseline_${w(bStart, bEnd).replace("&end", "&baseline_end")}&${w(start, end)}`),
    getJSON(`${base}/statistics?${w(bStart, bEnd)}`),
    getJSON(`${base}/statistics?${w(start, end)}`)]);
  let drift, sb, sw;
  try {
    [drift, sb, sw] = await answers;
  } catch (err) {  // e.g. 422 for a window that ends before it starts: keep the form
    main.append(h("p", { class: "error" }, err.message));
    return;
  }
  const entries = Object.entries(drift.features);
  main.append(
    table(["Feature", ["PSI", "num"], ["p-value", "num"], "Test", "Drifted"], entries.map(([name, d]) =>
      h("tr", { "data-feature": name }, h("td", {}, name), num(d.psi, { "data-col": "psi" }), num(d.p_value),
        h("td", {}, d.test || ""), h("td", { "data-col": "drifted" },
          h("span", { class: d.drifted ? "tag bad" : "tag good" }, d.drifted ? "drifted" : "stable")))),
    { id: "drift" }),
    h("p", { class: "legend" }, h("span", {}, h("i", { class: "sw a" }), "baseline"),
      h("span", {}, h("i", { class: "sw b" }), "window"), h("span", { class: "muted" }, "(shares of each window's values)")),
    h("div", { class: "cards", id: "drift-charts" }, entries.map(([name, d]) => {
      const a = sb.features[name], b = sw.features[name];
      return h("div", { class: "card", "data-feature": name },
        h("h3", {}, name, " ", h("span", { class: d.drifted ? "tag bad" : "tag good" }, `PSI ${fmt(d.psi)}`)),
        a && b ? chartOf(name, b, a) : h("p", { class: "muted" }, "no statistics"));
    })));
}
