// Dead letters of every DAG, newest first, filtered by experiment, plate, node, reason and
// time (the filters live in the URL, so a filtered list can be shared), a page at a time.

import { query } from "./api.js";
import { count, h, replace, time } from "./dom.js";

const PAGE = 100;

export function mount(container, args, ctx) {
  const view = new DeadLetterView(container, args, ctx);
  view.refresh();
  return view;
}

class DeadLetterView {
  constructor(container, args, ctx) {
    this.container = container;
    this.ctx = ctx;
    this.reading = false;
    this.build(args);
  }

  update(args) {
    this.build(args);
    this.refresh();
  }

  onEvent(kind) {
    // Only the first page moves under the operator's eyes.
    if (kind === "dead_letter" && !Number(this.args.offset)) this.refresh();
  }

  build(args) {
    this.args = args;
    const field = (name, label, attrs = {}) =>
      h("label", {}, label, h("input", { name, value: args[name] ?? "", size: attrs.size ?? 14, ...attrs }));
    const since = args.since ? new Date(Number(args.since)) : null;
    const local = since ? new Date(since.getTime() - since.getTimezoneOffset() * 60000).toISOString().slice(0, 16) : "";
    this.form = h(
      "form",
      { class: "filters", onsubmit: (e) => this.submit(e) },
      field("experiment", "experiment"),
      field("plate", "plate", { size: 4, inputmode: "numeric", pattern: "\\d*" }),
      field("node", "DAG node"),
      field("reason", "reason contains", { size: 22 }),
      h("label", {}, "since", h("input", { name: "since", type: "datetime-local", value: local })),
      h("button", { type: "submit" }, "Filter"),
      h("button", { type: "button", onclick: () => this.ctx.navigate("#/dead-letters") }, "Clear"),
    );
    this.summary = h("span", { class: "muted" });
    this.body = h("div");
    replace(this.container, h("div", { class: "head" }, h("h1", {}, "Dead letters"), this.summary), h("section", { class: "panel" }, this.form, this.body));
  }

  submit(e) {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(this.form));
    if (data.since) data.since = String(new Date(data.since).getTime());
    this.ctx.navigate(`#/dead-letters${query({ ...data, offset: "" })}`);
  }

  async refresh() {
    if (this.reading) return;
    this.reading = true;
    try {
      const { experiment, plate, node, reason, since } = this.args;
      const offset = Number(this.args.offset) || 0;
      const page = await this.ctx.load(this.ctx.get(`/api/dead-letters${query({ experiment, plate, node, reason, since, offset, limit: PAGE })}`));
      if (page) this.show(page, offset);
    } finally {
      this.reading = false;
    }
  }

  show(page, offset) {
    const list = page.dead_letters ?? [];
    this.summary.textContent = `${count(page.total)} matching${page.evicted ? ` · ${count(page.evicted)} older ones no longer kept` : ""}`;
    const pageHash = (o) => `#/dead-letters${query({ ...this.args, offset: o || "" })}`;
    replace(
      this.body,
      list.length
        ? h(
            "table",
            {},
            h("thead", {}, h("tr", {}, ["time", "DAG node", "reason", "experiment / plate / well", "key", "attempts", "source", "trace id"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              list.map((d) =>
                h(
                  "tr",
                  {},
                  h("td", { class: "mono nowrap" }, time(d.timestamp_ms)),
                  h("td", { class: "nowrap", title: `DAG ${d.dag}` }, d.node),
                  h("td", {}, d.reason),
                  h("td", { class: "nowrap" }, place(d)),
                  h("td", { class: "mono nowrap" }, d.key ?? "–"),
                  h("td", { class: "num" }, count(d.attempts)),
                  h("td", { class: "mono nowrap" }, d.source_topic ? `${d.source_topic}[${d.source_partition ?? "?"}]@${d.source_offset ?? "?"}` : "–"),
                  h("td", { class: "mono" }, d.trace_id ?? "–"),
                ),
              ),
            ),
          )
        : h("p", { class: "empty" }, "No dead letters match."),
      page.total > PAGE
        ? h(
            "div",
            { class: "pager" },
            offset > 0 ? h("a", { href: pageHash(Math.max(0, offset - PAGE)) }, "← newer") : null,
            h("span", { class: "muted" }, `${count(offset + 1)}–${count(offset + list.length)} of ${count(page.total)}`),
            offset + list.length < page.total ? h("a", { href: pageHash(offset + PAGE) }, "older →") : null,
          )
        : null,
    );
  }
}

function place(d) {
  if (!d.experiment) return "–";
  const e = encodeURIComponent(d.experiment);
  if (d.plate === null || d.plate === undefined) return h("a", { href: `#/experiments/${e}` }, d.experiment);
  const plateHash = `#/experiments/${e}/plates/${d.plate}`;
  return [
    h("a", { href: `#/experiments/${e}` }, d.experiment),
    " / ",
    h("a", { href: plateHash }, `plate ${d.plate}`),
    d.well ? [" / ", h("a", { href: `${plateHash}/wells/${d.well}` }, d.well)] : null,
  ];
}
