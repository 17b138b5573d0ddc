// The task store: every group with its queue depth, leases, failures and the workers
// holding leases now (the task API's /groups, /groups/{name}/stats and its leased tasks).
// The task API speaks kebab-case (`dead-lettered`, `client-id`), unlike the status API.

import { count, duration, h, replace } from "./dom.js";

export function mount(container, args, ctx) {
  const view = new TaskView(container, ctx);
  view.refresh();
  view.timer = setInterval(() => view.refresh(), 2000);
  return view;
}

class TaskView {
  constructor(container, ctx) {
    this.container = container;
    this.ctx = ctx;
    this.reading = false;
  }

  unmount() {
    clearInterval(this.timer);
  }

  async refresh() {
    if (this.reading || document.hidden) return;
    this.reading = true;
    try {
      await this.read();
    } finally {
      this.reading = false;
    }
  }

  async read() {
    if (!(await this.ctx.served).task_store) {
      clearInterval(this.timer);
      replace(
        this.container,
        h("div", { class: "head" }, h("h1", {}, "Task store")),
        h("p", { class: "empty" }, "This node does not run the task store (wellspring demo --serve serves the status API only; a node started with wellspring run serves both)."),
      );
      return;
    }
    const groups = await this.ctx.load(this.ctx.get("/groups"));
    if (!groups) return;
    const rows = await Promise.all(
      groups.map(async (g) => {
        const path = encodeURIComponent(g.name);
        const [stats, leased] = await Promise.all([
          this.ctx.load(this.ctx.get(`/groups/${path}/stats`)),
          this.ctx.load(this.ctx.get(`/groups/${path}/tasks?status=leased&limit=1000`)),
        ]);
        return { group: g, stats, leased: leased ?? [] };
      }),
    );
    const cols = ["group", "queue depth", "leased", "retrying", "succeeded", "dead-lettered", "oldest waiting", "workers wanted", "workers holding leases", "max run time"];
    replace(
      this.container,
      h("div", { class: "head" }, h("h1", {}, "Task store"), h("span", { class: "muted" }, `${count(groups.length)} group${groups.length === 1 ? "" : "s"} · refreshed every 2 s`)),
      h(
        "section",
        { class: "panel" },
        rows.length
          ? h(
              "table",
              {},
              h("thead", {}, h("tr", {}, cols.map((c, i) => h("th", { class: i >= 1 && i <= 7 ? "num" : null }, c)))),
              h("tbody", {}, rows.map(row)),
            )
          : h("p", { class: "empty" }, "No task groups yet."),
      ),
      rows.some((r) => r.leased.length)
        ? h(
            "section",
            { class: "panel" },
            h("h2", {}, "Leases"),
            h(
              "table",
              {},
              h("thead", {}, h("tr", {}, ["group", "task", "worker", "attempt", "lease expires in", "command"].map((c) => h("th", {}, c)))),
              h(
                "tbody",
                {},
                rows.flatMap((r) =>
                  r.leased.map((t) =>
                    h(
                      "tr",
                      {},
                      h("td", {}, t.group),
                      h("td", { class: "mono" }, t.id),
                      h("td", { class: "mono" }, t["client-id"] ?? "–"),
                      h("td", { class: "num" }, count(t.attempts)),
                      h("td", {}, t["lease-expires-at"] ? duration(t["lease-expires-at"] - Date.now()) : "–"),
                      h("td", { class: "mono" }, (t.cmd ?? []).join(" ")),
                    ),
                  ),
                ),
              ),
            ),
          )
        : null,
    );
  }
}

function row({ group, stats, leased }) {
  const s = stats ?? {};
  const workers = new Set(leased.map((t) => t["client-id"]).filter(Boolean));
  return h(
    "tr",
    {},
    h("td", {}, group.name),
    h("td", { class: "num" }, count(s.available)),
    h("td", { class: "num" }, count(s.leased)),
    h("td", { class: "num" }, count(s.failed)),
    h("td", { class: "num" }, count(s.succeeded)),
    h("td", { class: "num" }, s["dead-lettered"] ? h("b", { class: "bad-text" }, count(s["dead-lettered"])) : count(s["dead-lettered"])),
    h("td", { class: "num" }, s["oldest-waiting-ms"] === null || s["oldest-waiting-ms"] === undefined ? "–" : duration(s["oldest-waiting-ms"])),
    h("td", { class: "num" }, count(s["desired-workers"])),
    h("td", { class: "mono" }, workers.size ? [...workers].join(", ") : "–"),
    h("td", {}, duration(group["max-run-time"])),
  );
}
