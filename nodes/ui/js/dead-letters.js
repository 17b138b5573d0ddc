// Dead letters of every DAG, newest first, filtered by experiment, plate, node, reason and
// time (the filters live in the URL, so a filtered list can be shared), a page at a time.
// On a node (not demo --serve) each dead letter, and the filtered list, can be redriven:
// a dry run first says what would go where, the operator confirms, the answer is shown.

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
    const filter = this.filter();
    this.redriveAll = h(
      "button",
      {
        type: "button",
        class: "redrive-all",
        hidden: true,
        disabled: !Object.keys(filter).length,
        title: Object.keys(filter).length ? "Send the matching dead letters back into their stages" : "Filter first: a redrive needs a filter or an id",
        onclick: () => this.prepare({ filter }, "the matching dead letters"),
      },
      "Redrive matching…",
    );
    this.ctx.served.then((s) => {
      this.redrives = Boolean(s.redrive);
      this.redriveAll.hidden = !this.redrives;
    });
    // The confirmation and the result of a redrive, above the list.
    this.dialog = h("div", { class: "redrive-dialog", role: "alertdialog", "aria-live": "polite", hidden: true });
    this.result = h("p", { class: "redrive-result", "aria-live": "polite", hidden: true });
    replace(
      this.container,
      h("div", { class: "head" }, h("h1", {}, "Dead letters"), this.summary, this.redriveAll),
      h("section", { class: "panel" }, this.form, this.dialog, this.result, this.body),
    );
  }

  /** The filter of the list as the redrive API takes it (no paging). */
  filter() {
    const { experiment, plate, node, reason, since } = this.args;
    const out = {};
    if (experiment) out.experiment = experiment;
    if (plate) out.plate = Number(plate);
    if (node) out.node = node;
    if (reason) out.reason = reason;
    if (since) out.since = Number(since);
    return out;
  }

  /** Asks what a redrive of `selection` would do, then asks the operator to confirm it. */
  async prepare(selection, what, again = false) {
    this.result.hidden = true;
    const answer = await this.ctx.load(this.ctx.post("/api/dead-letters/redrive", { ...selection, dry_run: true, again }));
    if (!answer) return;
    const n = answer.redriven.length;
    const skipped = answer.skipped.length;
    const againBox = h("input", { type: "checkbox", name: "again", checked: again, onchange: () => this.prepare(selection, what, againBox.checked) });
    this.dialog.hidden = false;
    replace(
      this.dialog,
      h(
        "p",
        {},
        h("b", {}, `Redrive ${what}?`),
        ` ${count(n)} would go back into the stage where each failed`,
        skipped ? `; ${count(skipped)} would be skipped (${reasons(answer.skipped)})` : "",
        ".",
      ),
      h("label", {}, againBox, " also those redriven before (again)"),
      " ",
      h("button", { type: "button", class: "confirm-redrive", disabled: !n, onclick: () => this.redrive(selection, againBox.checked) }, n ? `Redrive ${count(n)}` : "Nothing to redrive"),
      " ",
      h("button", { type: "button", class: "cancel-redrive", onclick: () => (this.dialog.hidden = true) }, "Cancel"),
    );
  }

  async redrive(selection, again) {
    this.dialog.hidden = true;
    const answer = await this.ctx.load(this.ctx.post("/api/dead-letters/redrive", { ...selection, dry_run: false, again }));
    if (!answer) return;
    this.result.hidden = false;
    this.result.dataset.redriven = String(answer.redriven.length);
    this.result.dataset.skipped = String(answer.skipped.length);
    replace(
      this.result,
      `Redrove ${count(answer.redriven.length)} dead letter${answer.redriven.length === 1 ? "" : "s"}`,
      answer.redriven.length ? ` into ${[...new Set(answer.redriven.map((i) => i.topic))].join(", ")}` : "",
      answer.skipped.length ? `; skipped ${count(answer.skipped.length)} (${reasons(answer.skipped)})` : "",
      ".",
    );
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
      // Whether this server redrives decides the rows' buttons.
      this.redrives = Boolean((await this.ctx.served).redrive);
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
            h("thead", {}, h("tr", {}, ["time", "DAG node", "reason", "experiment / plate / well / site", "key", "attempts", "source", "trace id", ""].map((c) => h("th", {}, c)))),
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
                  h(
                    "td",
                    {},
                    this.redrives
                      ? h("button", { type: "button", class: "redrive-one", "data-id": d.id, title: `Send dead letter ${d.id} back into ${d.node}`, onclick: () => this.prepare({ ids: [d.id] }, `this dead letter of ${d.node}`) }, "Redrive")
                      : null,
                  ),
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

/** The distinct reasons items were skipped for, in short. */
function reasons(items) {
  return [...new Set(items.map((i) => i.why))].join("; ");
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
    d.site ? ` / site ${d.site}` : null,
  ];
}
