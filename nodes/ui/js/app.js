// The dashboard's shell: hash routes to views, the token field, the live connection, and
// the page's own error list (#page-errors: every uncaught error is shown there, so an
// operator sees it and a test can read it).

import { ApiError, events, get, post, setToken, token } from "./api.js";
import { h, replace } from "./dom.js";
import * as dag from "./dag.js";
import * as experiments from "./experiments.js";
import * as plate from "./plate.js";
import * as deadLetters from "./dead-letters.js";
import * as tasks from "./tasks.js";

const errors = document.getElementById("page-errors");
function pageError(message) {
  errors.hidden = false;
  errors.append(h("li", {}, message));
  errors.dataset.count = String(errors.children.length);
}
window.addEventListener("error", (e) => pageError(`${e.message} (${e.filename}:${e.lineno})`));
window.addEventListener("unhandledrejection", (e) => {
  const reason = e.reason;
  if (reason instanceof ApiError) notice(reason.message);
  else pageError(`unhandled: ${reason?.stack ?? reason}`);
});

const noticeEl = document.getElementById("notice");
/** A message about the node (unreachable, refused), not an error of the page. */
function notice(message) {
  noticeEl.hidden = !message;
  noticeEl.textContent = message ?? "";
}

/** [pattern, view module, nav key]; patterns are matched against the hash path. */
const ROUTES = [
  [/^\/dags$/, dag, "dags", () => ({})],
  [/^\/experiments$/, experiments, "experiments", () => ({})],
  [/^\/experiments\/([^/]+)$/, experiments, "experiments", (m) => ({ experiment: decodeURIComponent(m[1]) })],
  [
    /^\/experiments\/([^/]+)\/plates\/(\d+)(?:\/wells\/([A-Za-z]+\d+))?$/,
    plate,
    "experiments",
    (m) => ({ experiment: decodeURIComponent(m[1]), plate: Number(m[2]), well: m[3]?.toUpperCase() }),
  ],
  [/^\/dead-letters$/, deadLetters, "dead-letters", () => ({})],
  [/^\/tasks$/, tasks, "tasks", () => ({})],
];

const viewEl = document.getElementById("view");
let current = null;
let currentPath = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/experiments";
  const [path, search = ""] = raw.split("?");
  return { path, params: Object.fromEntries(new URLSearchParams(search)) };
}

function route() {
  const { path, params } = parseHash();
  for (const [pattern, module, nav, parse] of ROUTES) {
    const m = path.match(pattern);
    if (!m) continue;
    document.querySelectorAll("[data-nav]").forEach((a) => {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    const args = { ...params, ...parse(m) };
    // The same view with other arguments (a well picked on the plate) keeps its state.
    if (current && currentPath === module && current.update) {
      current.update(args);
      return;
    }
    current?.unmount?.();
    notice(null);
    // Each view renders into an element of its own: an answer that reaches a view after
    // it was left is drawn into its detached element, not over the view shown now.
    const root = h("div", { class: "view-root" }, h("p", { class: "muted" }, "Loading…"));
    replace(viewEl, root);
    currentPath = module;
    current = module.mount(root, args, context);
    return;
  }
  location.hash = "#/experiments";
}

/** What the node serves besides the status API (demo --serve runs no task store). */
const served = fetch("/ui/served.json", { cache: "no-store" })
  .then((r) => (r.ok ? r.json() : { task_store: true, redrive: true }))
  .catch(() => ({ task_store: true, redrive: true }));
served.then((s) => {
  document.querySelector('[data-nav="tasks"]').hidden = !s.task_store;
});

/** What every view is given. */
const context = {
  get,
  post,
  served,
  notice,
  /** Runs an API call; the node's refusals become a notice, anything else is a page error. */
  async load(promise) {
    try {
      const value = await promise;
      notice(null);
      return value;
    } catch (e) {
      if (e instanceof ApiError) {
        notice(e.status === 401 ? "The node asks for a token: enter it at the top right." : e.message);
        return undefined;
      }
      if (e.name === "AbortError") return undefined;
      throw e;
    }
  },
  navigate(hash) {
    location.hash = hash;
  },
};

// Live updates: events go to the current view; while the stream is down, views poll.
const liveEl = document.getElementById("live");
let liveState = "connecting";
let stopEvents = null;
function connect() {
  stopEvents?.();
  stopEvents = events(
    (kind, data) => current?.onEvent?.(kind, data),
    (state) => {
      // Back after a gap: what changed meanwhile sent no event here, so read it again.
      if (state === "open" && liveState !== "open" && liveState !== "connecting") current?.refresh?.();
      liveState = state;
      liveEl.dataset.live = state;
      liveEl.querySelector("span").textContent =
        { open: "live", retrying: "reconnecting", refused: "token needed", unavailable: "polling" }[state] ?? state;
      if (state === "refused") notice("The node asks for a token: enter it at the top right.");
    },
  );
}
setInterval(() => {
  if (liveState !== "open" && !document.hidden) current?.refresh?.();
}, 5000);

// The token: from the field (kept for this tab only) or once from ?token= in the URL.
const tokenInput = document.getElementById("token");
const fromUrl = new URLSearchParams(location.search).get("token");
if (fromUrl) {
  setToken(fromUrl);
  history.replaceState(null, "", location.pathname + location.hash);
}
tokenInput.value = token();
document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  connect();
  current?.unmount?.();
  current = null;
  route();
});

get("/api/dags")
  .then((d) => {
    if (d?.node) document.getElementById("node").textContent = `node ${d.node}`;
  })
  .catch(() => {});

window.addEventListener("hashchange", route);
route();
connect();
