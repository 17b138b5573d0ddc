// The plate map: the plate in its real geometry (96, 384 or 1536 wells), one cell per
// well coloured by its state (with a glyph and a tooltip: never colour alone), or by a
// QC metric as a heatmap with its scale. Live: an event naming the plate re-reads it (one
// read in flight at a time) and only the cells that changed are touched, all in one
// animation frame.

import { query } from "./api.js";
import { STATES, badge, count, frameBatcher, h, number, percent, replace, rowName, stateLabel, time, ago } from "./dom.js";
import { renderWell } from "./well.js";

const LEGEND = ["waiting", "partial", "complete", "incomplete", "dead_lettered", "not_in_use"];

/** Viridis, sampled: perceptually even and readable by the colour-blind. */
const RAMP = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];

function rampColor(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  const a = hex(RAMP[i]);
  const b = hex(RAMP[i + 1]);
  const c = a.map((v, k) => Math.round(v + (b[k] - v) * f));
  return { color: `rgb(${c[0]} ${c[1]} ${c[2]})`, ink: 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2] > 140 ? "#111" : "#f4f4f4" };
}

function hex(s) {
  return [1, 3, 5].map((i) => parseInt(s.slice(i, i + 2), 16));
}

export function mount(container, args, ctx) {
  const view = new PlateView(container, args, ctx);
  view.start();
  return view;
}

class PlateView {
  constructor(container, args, ctx) {
    this.container = container;
    this.ctx = ctx;
    this.args = args;
    this.mode = args.color === "qc" ? "qc" : "state";
    this.metric = args.metric ?? null;
    this.cells = new Map(); // well name -> { el, state, qc }
    this.plate = null;
    this.experiment = null;
    this.geometryKey = null;
    this.reading = false;
    this.again = false;
    this.closed = false;
    this.deadLetters = [];
    this.apply = frameBatcher((batch) => this.applyCells(batch));
  }

  start() {
    this.build();
    this.refresh();
    this.loadExperiment();
  }

  unmount() {
    this.closed = true;
    this.tooltip.hidden = true;
  }

  /** The same plate with another well picked, or another plate. */
  update(args) {
    const samePlate = args.experiment === this.args.experiment && args.plate === this.args.plate;
    this.args = args;
    if (!samePlate) {
      this.cells.clear();
      this.geometryKey = null;
      this.plate = null;
      this.build();
      this.loadExperiment();
      this.refresh();
      return;
    }
    this.select(args.well);
  }

  onEvent(kind, data) {
    const mine = data.experiment === this.args.experiment;
    if (kind === "plate" && mine && data.plate === this.args.plate) this.refresh();
    else if ((kind === "dead_letter" || kind === "incomplete") && mine) {
      this.loadExperiment();
      this.refresh();
    }
  }

  build() {
    const { experiment, plate } = this.args;
    const e = encodeURIComponent(experiment);
    this.title = h("h1", {}, `Plate ${plate}`);
    this.stateBadge = h("span");
    this.stats = h("div", { class: "stats" });
    this.legend = h("div", { class: "legend", "aria-label": "Legend" });
    this.metricSelect = h("select", { "aria-label": "QC metric", onchange: () => this.setMode("qc", this.metricSelect.value) });
    this.stateButton = h("button", { type: "button", "aria-pressed": "true", onclick: () => this.setMode("state") }, "State");
    this.qcButton = h("button", { type: "button", "aria-pressed": "false", onclick: () => this.setMode("qc", this.metricSelect.value) }, "QC heatmap");
    this.grid = h("div", { class: "plate", role: "group", tabindex: "0", "aria-label": `Plate ${plate} wells (arrow keys pick a well)`, "data-mode": this.mode });
    this.detail = h("aside", { class: "panel detail", "aria-live": "polite" }, h("p", { class: "muted" }, "Pick a well for its sites, channels, tasks and dead letters."));
    this.tooltip = document.getElementById("tooltip");
    this.grid.addEventListener("mouseover", (ev) => this.hover(ev));
    this.grid.addEventListener("mousemove", (ev) => this.moveTooltip(ev));
    this.grid.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
    this.grid.addEventListener("click", (ev) => {
      const cell = ev.target.closest(".well");
      if (cell && cell.dataset.state !== "not_in_use") this.ctx.navigate(this.wellHash(cell.dataset.well));
    });
    this.grid.addEventListener("keydown", (ev) => this.key(ev));
    replace(
      this.container,
      h(
        "div",
        { class: "head" },
        h("span", { class: "crumbs" }, h("a", { href: "#/experiments" }, "Experiments"), " / ", h("a", { href: `#/experiments/${e}` }, experiment), " /"),
        this.title,
        this.stateBadge,
      ),
      h(
        "div",
        { class: "grid2" },
        h(
          "section",
          { class: "panel" },
          this.stats,
          h("div", { class: "plate-tools" }, h("div", { class: "segmented", role: "group", "aria-label": "Colour wells by" }, this.stateButton, this.qcButton), this.metricSelect, this.legend),
          h("div", { class: "plate-wrap" }, this.grid),
        ),
        this.detail,
      ),
    );
    this.updateModeControls();
  }

  wellHash(well) {
    const e = encodeURIComponent(this.args.experiment);
    const q = this.mode === "qc" && this.metric ? query({ color: "qc", metric: this.metric }) : "";
    return `#/experiments/${e}/plates/${this.args.plate}${well ? `/wells/${well}` : ""}${q}`;
  }

  setMode(mode, metric) {
    this.mode = mode;
    if (metric) this.metric = metric;
    history.replaceState(null, "", this.wellHash(this.args.well));
    this.updateModeControls();
    if (this.plate) this.diff(this.plate, true);
  }

  updateModeControls() {
    this.grid.dataset.mode = this.mode;
    this.stateButton.setAttribute("aria-pressed", String(this.mode === "state"));
    this.qcButton.setAttribute("aria-pressed", String(this.mode === "qc"));
    this.metricSelect.hidden = this.mode !== "qc";
    this.renderLegend();
  }

  /** Reads the plate; a read asked for while one runs is done once it ends. */
  async refresh() {
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = true;
    try {
      const { experiment, plate } = this.args;
      const body = await this.ctx.load(this.ctx.get(`/api/experiments/${encodeURIComponent(experiment)}/plates/${plate}`));
      if (body && !this.closed && body.experiment === this.args.experiment) this.show(body);
    } finally {
      this.reading = false;
      if (this.again && !this.closed) {
        this.again = false;
        setTimeout(() => this.refresh(), 150);
      }
    }
  }

  async loadExperiment() {
    const e = encodeURIComponent(this.args.experiment);
    const [experiment, dead] = await Promise.all([
      this.ctx.load(this.ctx.get(`/api/experiments/${e}`)),
      this.ctx.load(this.ctx.get(`/api/dead-letters${query({ experiment: this.args.experiment, plate: this.args.plate, limit: 1000 })}`)),
    ]);
    if (this.closed) return;
    if (experiment) this.experiment = experiment;
    if (dead) this.deadLetters = dead.dead_letters ?? [];
    this.renderDetail();
  }

  show(plate) {
    this.plate = plate;
    const { rows, columns } = plate.geometry;
    const key = `${rows}x${columns}`;
    if (key !== this.geometryKey) this.layout(plate);
    this.title.textContent = `Plate ${plate.plate}${plate.barcode ? ` · ${plate.barcode}` : ""}`;
    replace(this.stateBadge, badge(plate.state));
    this.renderStats(plate);
    this.updateMetrics(plate);
    this.diff(plate, false);
    this.renderDetail();
  }

  /** The grid for this geometry: column labels, row labels, one cell per well. */
  layout(plate) {
    const { rows, columns } = plate.geometry;
    this.geometryKey = `${rows}x${columns}`;
    this.cells.clear();
    // The whole plate in view: as wide as the panel allows and as tall as the window.
    const width = Math.max(480, (this.grid.parentElement?.clientWidth || 900) - 40);
    const height = Math.max(360, window.innerHeight - 250);
    const gap = columns > 24 ? 2 : 3;
    const cell = Math.max(11, Math.min(44, Math.floor(width / (columns + 1)) - gap, Math.floor(height / (rows + 1)) - gap));
    const s = this.grid.style;
    s.setProperty("--cell", `${cell}px`);
    s.setProperty("--gap", `${gap}px`);
    s.setProperty("--glyph", `${Math.max(8, Math.round(cell * 0.55))}px`);
    s.setProperty("--label-size", `${Math.max(8, Math.min(11, Math.round(cell * 0.5)))}px`);
    s.setProperty("--radius", `${cell < 16 ? 2 : 3}px`);
    s.gridTemplateColumns = `${Math.max(cell, 16)}px repeat(${columns}, ${cell}px)`;
    const fragment = document.createDocumentFragment();
    fragment.append(h("span", { class: "lbl" }));
    for (let c = 1; c <= columns; c++) fragment.append(h("span", { class: "lbl", "aria-hidden": "true" }, String(c)));
    const names = plate.wells.map((w) => w.well);
    for (let r = 0; r < rows; r++) {
      fragment.append(h("span", { class: "lbl", "aria-hidden": "true" }, rowName(r)));
      for (let c = 0; c < columns; c++) {
        const name = names[r * columns + c] ?? `${rowName(r)}${String(c + 1).padStart(2, "0")}`;
        const el = h("div", { class: "well", role: "img", "data-well": name, "data-state": "waiting" });
        fragment.append(el);
        this.cells.set(name, { el, state: null, qc: undefined, label: null });
      }
    }
    this.grid.replaceChildren(fragment);
  }

  /** Queues the cells whose state or colour changed; they are written in one frame. */
  diff(plate, recolour) {
    const range = this.range(plate);
    for (const w of plate.wells) {
      const cell = this.cells.get(w.well);
      if (!cell) continue;
      const value = this.metric ? w.qc?.[this.metric] : undefined;
      const label = `${w.well} ${stateLabel(w.state)}${w.images?.expected ? `, ${w.images.present} of ${w.images.expected} images` : ""}`;
      if (cell.state !== w.state || cell.qc !== value || cell.label !== label || recolour) {
        cell.state = w.state;
        cell.qc = value;
        cell.label = label;
        this.apply(w.well, { state: w.state, value, range, label });
      }
    }
    this.wells = new Map(plate.wells.map((w) => [w.well, w]));
  }

  applyCells(batch) {
    for (const [name, { state, value, range, label }] of batch) {
      const el = this.cells.get(name)?.el;
      if (!el) continue;
      if (el.dataset.state !== state) el.dataset.state = state;
      el.setAttribute("aria-label", label);
      if (value === undefined || value === null || !range) {
        el.style.removeProperty("--qc");
        el.style.removeProperty("--qc-ink");
        delete el.dataset.qc;
      } else {
        const { color, ink } = rampColor(range.max > range.min ? (value - range.min) / (range.max - range.min) : 0.5);
        el.style.setProperty("--qc", color);
        el.style.setProperty("--qc-ink", ink);
        el.dataset.qc = "";
      }
    }
  }

  range(plate) {
    if (!this.metric) return null;
    const r = plate.qc_ranges?.[this.metric];
    if (r) return r;
    let min = Infinity;
    let max = -Infinity;
    for (const w of plate.wells) {
      const v = w.qc?.[this.metric];
      if (typeof v === "number") {
        min = Math.min(min, v);
        max = Math.max(max, v);
      }
    }
    return min <= max ? { min, max } : null;
  }

  updateMetrics(plate) {
    const names = new Set(Object.keys(plate.qc_ranges ?? {}));
    for (const w of plate.wells) for (const k of Object.keys(w.qc ?? {})) names.add(k);
    const sorted = [...names].sort();
    const have = [...this.metricSelect.options].map((o) => o.value);
    if (sorted.join() !== have.join()) {
      replace(this.metricSelect, sorted.map((n) => h("option", { value: n }, n.replaceAll("_", " "))));
    }
    if (!this.metric || !names.has(this.metric)) this.metric = sorted[0] ?? null;
    if (this.metric) this.metricSelect.value = this.metric;
    this.qcButton.disabled = sorted.length === 0;
    this.qcButton.title = sorted.length ? "" : "No QC values yet: they come with the wells' task outputs";
    this.renderLegend();
  }

  renderLegend() {
    if (this.mode === "qc" && this.plate && this.metric) {
      const range = this.range(this.plate);
      const ramp = h("span", { class: "ramp", role: "img", "aria-label": `${this.metric} scale` });
      ramp.style.background = `linear-gradient(90deg, ${RAMP.join(", ")})`;
      replace(
        this.legend,
        h(
          "span",
          { class: "scale" },
          this.metric.replaceAll("_", " "),
          h("span", { class: "mono" }, range ? number(range.min) : "–"),
          ramp,
          h("span", { class: "mono" }, range ? number(range.max) : "–"),
        ),
        h("span", { class: "key" }, h("span", { class: "well", "data-state": "waiting" }), "no value yet"),
        h("span", { class: "key" }, h("span", { class: "well", "data-state": "dead_lettered" }), "dead-lettered"),
        h("span", { class: "key" }, h("span", { class: "well", "data-state": "incomplete" }), "incomplete"),
      );
      return;
    }
    const byState = this.plate?.wells_by_state ?? {};
    replace(
      this.legend,
      LEGEND.map((s) =>
        h("span", { class: "key" }, h("span", { class: "well", "data-state": s, "aria-hidden": "true" }), `${STATES[s].label}`, h("span", { class: "mono" }, count(byState[s] ?? 0))),
      ),
    );
  }

  renderStats(plate) {
    const inUse = plate.wells_in_use;
    const done = plate.wells_by_state?.complete ?? 0;
    const problems = (plate.wells_by_state?.incomplete ?? 0) + (plate.wells_by_state?.dead_lettered ?? 0);
    replace(
      this.stats,
      stat(`${plate.geometry.wells}`, "well plate"),
      stat(count(inUse), "wells in use"),
      stat(`${count(done)} · ${percent(done, inUse)}`, "wells complete"),
      stat(count(problems), "wells with problems", problems > 0),
      stat(`${count(plate.images.present)} / ${count(plate.images.expected)}`, "images"),
      stat(time(plate.first_image_ms), "first image"),
      stat(ago(plate.last_image_ms), "last image"),
      Object.entries(plate.qc ?? {}).map(([k, v]) => stat(number(v), k.replaceAll("_", " "))),
    );
  }

  hover(ev) {
    const cell = ev.target.closest(".well");
    if (!cell || !this.wells) {
      this.tooltip.hidden = true;
      return;
    }
    const w = this.wells.get(cell.dataset.well);
    if (!w) return;
    const lines = [`${w.well} — ${stateLabel(w.state)}`];
    if (w.state !== "not_in_use") {
      lines.push(`${count(w.images.present)} of ${count(w.images.expected)} images`);
      const missing = (w.sites ?? []).flatMap((s) => s.channels_missing.map((c) => `site ${s.site} ch ${c}`));
      if (missing.length) lines.push(`missing: ${missing.slice(0, 4).join(", ")}${missing.length > 4 ? ` +${missing.length - 4}` : ""}`);
      if (w.dead_letters) lines.push(`${w.dead_letters} dead letter${w.dead_letters > 1 ? "s" : ""}`);
      if (this.metric && w.qc?.[this.metric] !== undefined) lines.push(`${this.metric.replaceAll("_", " ")} ${number(w.qc[this.metric])}`);
    }
    this.tooltip.textContent = lines.join("\n");
    this.tooltip.hidden = false;
    this.moveTooltip(ev);
  }

  moveTooltip(ev) {
    if (this.tooltip.hidden) return;
    const x = Math.min(ev.clientX + 14, window.innerWidth - this.tooltip.offsetWidth - 8);
    const y = Math.min(ev.clientY + 14, window.innerHeight - this.tooltip.offsetHeight - 8);
    this.tooltip.style.left = `${x}px`;
    this.tooltip.style.top = `${y}px`;
  }

  /** Arrow keys move the picked well; Escape drops it. */
  key(ev) {
    if (!this.plate) return;
    const { rows, columns } = this.plate.geometry;
    const names = this.plate.wells.map((w) => w.well);
    let i = Math.max(0, names.indexOf(this.args.well));
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns };
    if (ev.key === "Escape") {
      this.ctx.navigate(this.wellHash(null));
      return;
    }
    if (!(ev.key in moves)) return;
    ev.preventDefault();
    i = Math.min(rows * columns - 1, Math.max(0, i + moves[ev.key]));
    this.ctx.navigate(this.wellHash(names[i]));
  }

  select(well) {
    for (const el of this.grid.querySelectorAll('[aria-selected="true"]')) el.removeAttribute("aria-selected");
    if (well) this.cells.get(well)?.el.setAttribute("aria-selected", "true");
    this.renderDetail();
  }

  /** With no well picked: the wells that need attention, each a link to its detail. */
  renderProblems() {
    const problems = this.plate.wells.filter((w) => w.state === "dead_lettered" || w.state === "incomplete" || w.dead_letters > 0);
    replace(
      this.detail,
      h("h2", {}, `Wells that need attention (${count(problems.length)})`),
      problems.length
        ? h(
            "ul",
            { class: "alerts" },
            problems.slice(0, 200).map((w) =>
              h(
                "li",
                { class: w.state === "dead_lettered" || w.dead_letters ? "bad" : "" },
                h("a", { href: this.wellHash(w.well) }, w.well),
                " ",
                badge(w.state),
                h("span", { class: "muted" }, ` ${count(w.images.present)} of ${count(w.images.expected)} images${w.dead_letters ? ` · ${w.dead_letters} dead letters` : ""}`),
              ),
            ),
          )
        : h("p", { class: "muted" }, "None: no well is incomplete or dead-lettered."),
      h("p", { class: "muted" }, "Pick a well on the map for its sites, channels, tasks and dead letters (arrow keys move, Escape closes)."),
    );
  }

  renderDetail() {
    const name = this.args.well;
    for (const el of this.grid.querySelectorAll('[aria-selected="true"]')) if (el.dataset.well !== name) el.removeAttribute("aria-selected");
    if (name) this.cells.get(name)?.el.setAttribute("aria-selected", "true");
    if (!this.wells) return;
    if (!name) {
      this.renderProblems();
      return;
    }
    const well = this.wells.get(name);
    if (!well) {
      replace(this.detail, h("p", { class: "muted" }, `No well ${name} on this plate.`));
      return;
    }
    renderWell(this.detail, {
      well,
      plate: this.plate,
      experiment: this.experiment,
      deadLetters: this.deadLetters.filter((d) => d.well === name),
      close: () => this.ctx.navigate(this.wellHash(null)),
    });
  }
}

function stat(value, label, bad = false) {
  return h("div", { class: `stat${bad ? " bad" : ""}` }, h("b", {}, value), h("span", {}, label));
}
