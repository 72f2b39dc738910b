// The operator UI: hash routes, the API key prompt (with --auth), the caller's identity.
import { ApiError, apiKey, getJSON, setApiKey } from "./api.js";
import { h } from "./pages.js";
import * as pages from "./pages.js";

const ROUTES = {
  groups: pages.groupsPage,
  group: pages.groupPage,
  record: pages.recordPage,
  offline: pages.offlinePage,
  ingest: pages.ingestPage,
  stats: pages.statsPage,
  drift: pages.driftPage,
};

const main = document.getElementById("main");
let who = null;  // GET /v1/whoami: {name, kind, admin, permissions}

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, ...rest] = path.split("/");
  return { page: page || "groups", arg: rest.length ? decodeURIComponent(rest.join("/")) : null,
           params: new URLSearchParams(query) };
}

function loginForm(message) {
  const input = h("input", { type: "password", id: "api-key", placeholder: "API key",
                             autocomplete: "off" });
  const form = h("form", { class: "login" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, message),
    input,
    h("button", { type: "submit" }, "Use this key"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    setApiKey(input.value.trim());
    route();
  });
  main.replaceChildren(form);
  input.focus();
}

function showWho() {
  const box = document.getElementById("who");
  box.replaceChildren();
  if (!who) return;
  box.append(`${who.name}${who.admin ? " (admin)" : ""}`);
  if (apiKey()) {
    const out = h("button", { class: "secondary", id: "sign-out" }, "Sign out");
    out.addEventListener("click", () => { setApiKey(null); who = null; route(); });
    box.append(out);
  }
}

async function route() {
  const { page, arg, params } = parseHash();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page || (page === "group" && a.dataset.page === "groups"));
  }
  try {
    if (!who) who = await getJSON("/v1/whoami");
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      const hadKey = apiKey() !== null;
      setApiKey(null);
      showWho();
      loginForm(hadKey ? `That key was refused: ${err.message}`
        : "This server requires an API key (tessera keys create). It is kept in this tab only.");
      return;
    }
    main.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
    return;
  }
  showWho();
  const render = ROUTES[page] || pages.groupsPage;
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await render(main, { arg, params, who });
  } catch (err) {
    main.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
  }
}

window.addEventListener("hashchange", route);
route();
