// Experiments: every experiment with its progress per level and its alerts; one
// experiment with its plates (each a small map link) and its incomplete reports.

import { ago, badge, count, h, percent, replace, time } from "./dom.js";

export function mount(container, args, ctx) {
  const view = args.experiment ? new ExperimentView(container, args, ctx) : new ListView(container, ctx);
  view.refresh();
  return view;
}

/** A refresh asked for while one runs is done once after it, at most every 250 ms. */
function coalesced(read) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await read();
    } finally {
      running = false;
      if (again) {
        again = false;
        setTimeout(run, 250);
      }
    }
  };
  return run;
}

function levels(list) {
  return h(
    "div",
    { class: "levels" },
    list.map((l) => {
      const fill = h("span", { class: "bar-fill" });
      const dead = h("span", { class: "bar-dead" });
      const total = Math.max(1, l.expected);
      fill.style.width = `${(100 * Math.min(l.present, l.expected)) / total}%`;
      dead.style.width = `${(100 * Math.min(l.dead_lettered, l.expected)) / total}%`;
      return [
        h("span", {}, l.name, l.task ? h("span", { class: "muted" }, " task") : null),
        h("span", { class: "bar-track", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": String(l.expected), "aria-valuenow": String(l.present), "aria-label": l.name }, fill, dead),
        h(
          "span",
          { class: "count" },
          `${count(l.present)} / ${count(l.expected)}`,
          l.dead_lettered ? h("b", { class: "bad-text" }, ` ✕${count(l.dead_lettered)}`) : null,
        ),
      ];
    }),
  );
}

/** What an operator should look at: dead letters, incomplete reports, a stalled run. */
function alerts(e) {
  const list = [];
  if (e.dead_letters) list.push(["bad", `${count(e.dead_letters)} dead letter${e.dead_letters > 1 ? "s" : ""}`, `#/dead-letters?experiment=${encodeURIComponent(e.id)}`]);
  if (e.incomplete_reports) list.push(["bad", `${count(e.incomplete_reports)} incomplete report${e.incomplete_reports > 1 ? "s" : ""}`, `#/experiments/${encodeURIComponent(e.id)}`]);
  if (!e.layout_known) list.push(["", "no layout (experiment metadata) yet: expected counts unknown", null]);
  const idle = e.last_image_ms && Date.now() - e.last_image_ms > 10 * 60 * 1000;
  if (idle && e.state !== "complete") list.push(["", `no image for ${ago(e.last_image_ms).replace(" ago", "")} and not complete`, null]);
  if (!list.length) return null;
  return h("ul", { class: "alerts" }, list.map(([cls, text, href]) => h("li", { class: cls }, href ? h("a", { href }, text) : text)));
}

class ListView {
  constructor(container, ctx) {
    this.container = container;
    this.ctx = ctx;
    this.refresh = coalesced(() => this.read());
  }

  onEvent(kind) {
    if (kind === "experiment" || kind === "incomplete" || kind === "dead_letter") this.refresh();
  }

  async read() {
    const body = await this.ctx.load(this.ctx.get("/api/experiments"));
    if (!body) return;
    if (body.view_error) this.ctx.notice(`The status view cannot read the log (${body.view_error}): what you see may be stale.`);
    const list = body.experiments ?? [];
    replace(
      this.container,
      h("div", { class: "head" }, h("h1", {}, "Experiments"), h("span", { class: "muted" }, `${count(list.length)} known`, body.evicted ? `, ${count(body.evicted)} older ones no longer kept` : "")),
      list.length
        ? h(
            "div",
            { class: "cards" },
            list.map((e) =>
              h(
                "section",
                { class: "panel card" },
                h(
                  "div",
                  { class: "head" },
                  h("h1", {}, h("a", { href: `#/experiments/${encodeURIComponent(e.id)}` }, e.id)),
                  badge(e.state),
                  h("span", { class: "muted" }, `${e.dag} · ${count(e.plates)} plate${e.plates === 1 ? "" : "s"} · last image ${ago(e.last_image_ms)}`),
                ),
                levels(e.levels),
                alerts(e),
              ),
            ),
          )
        : h("p", { class: "empty" }, "No experiment has sent an image yet."),
    );
  }
}

class ExperimentView {
  constructor(container, args, ctx) {
    this.container = container;
    this.args = args;
    this.ctx = ctx;
    this.refresh = coalesced(() => this.read());
  }

  onEvent(kind, data) {
    if (data.experiment === this.args.experiment) this.refresh();
  }

  async read() {
    const id = this.args.experiment;
    const e = await this.ctx.load(this.ctx.get(`/api/experiments/${encodeURIComponent(id)}`));
    if (!e) return;
    const enc = encodeURIComponent(e.id);
    replace(
      this.container,
      h(
        "div",
        { class: "head" },
        h("span", { class: "crumbs" }, h("a", { href: "#/experiments" }, "Experiments"), " /"),
        h("h1", {}, e.id),
        badge(e.state),
        h("span", { class: "muted" }, `${e.dag} · ${e.sites_per_well} sites × ${e.channels_per_site} channels per well · first image ${time(e.first_image_ms)} · last ${ago(e.last_image_ms)}`),
      ),
      h(
        "div",
        { class: "grid2" },
        h(
          "div",
          {},
          h(
            "section",
            { class: "panel" },
            h("h2", {}, "Plates"),
            h(
              "table",
              {},
              h(
                "thead",
                {},
                h("tr", {}, ["plate", "barcode", "state", "geometry", "wells complete", "problems", "images", "last image"].map((t, i) => h("th", { class: i >= 4 && i <= 6 ? "num" : null }, t))),
              ),
              h(
                "tbody",
                {},
                e.plate_list.map((p) => {
                  const done = p.wells_by_state?.complete ?? 0;
                  const problems = (p.wells_by_state?.incomplete ?? 0) + (p.wells_by_state?.dead_lettered ?? 0);
                  return h(
                    "tr",
                    {},
                    h("td", {}, h("a", { href: `#/experiments/${enc}/plates/${p.plate}` }, `Plate ${p.plate}`)),
                    h("td", { class: "mono" }, p.barcode ?? "–"),
                    h("td", {}, badge(p.state)),
                    h("td", {}, `${p.geometry.wells} (${p.geometry.rows}×${p.geometry.columns})`),
                    h("td", { class: "num" }, `${count(done)} / ${count(p.wells_in_use)} · ${percent(done, p.wells_in_use)}`),
                    h("td", { class: "num" }, problems ? h("b", { class: "bad-text" }, count(problems)) : "0"),
                    h("td", { class: "num" }, `${count(p.images.present)} / ${count(p.images.expected)}`),
                    h("td", {}, ago(p.last_image_ms)),
                  );
                }),
              ),
            ),
          ),
          h("section", { class: "panel" }, h("h2", {}, "Progress per level"), levels(e.levels)),
        ),
        h(
          "aside",
          { class: "panel" },
          h("h2", {}, "Alerts"),
          alerts(e) ?? h("p", { class: "muted" }, "None."),
          h("h2", {}, `Incomplete reports (${count(e.incomplete.length)})`),
          e.incomplete.length
            ? h("ul", { class: "alerts" }, e.incomplete.map((r) => h("li", { class: "bad" }, h("div", {}, r.description), h("div", { class: "mono" }, reportLink(enc, r.key)))))
            : h("p", { class: "muted" }, "None."),
        ),
      ),
    );
  }
}

/** A report's key ("E/1/B02/3") as a link to its plate, or its well on the plate. */
function reportLink(enc, key) {
  const [, plate, well] = key.split("/");
  if (!plate || !/^\d+$/.test(plate)) return h("span", { class: "muted" }, key);
  const href = `#/experiments/${enc}/plates/${plate}${well ? `/wells/${well}` : ""}`;
  return h("a", { href }, key);
}
