// Each DAG drawn as a graph (SVG, laid out in columns by depth from its sources) with
// live counters on every node, and the same figures as a table with the shards' owners.

import { count, h, number, replace } from "./dom.js";

const NODE_W = 214;
const NODE_H = 82;
const COL_GAP = 56;
const ROW_GAP = 14;

export function mount(container, args, ctx) {
  const view = new DagView(container, ctx);
  view.refresh();
  return view;
}

class DagView {
  constructor(container, ctx) {
    this.container = container;
    this.ctx = ctx;
    this.shape = null;
    this.reading = false;
    this.again = false;
    this.figures = new Map(); // "dag/node" -> { line1, line2, group }
  }

  onEvent(kind) {
    if (kind === "dags" || kind === "experiment") this.refresh();
  }

  async refresh() {
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = true;
    try {
      const body = await this.ctx.load(this.ctx.get("/api/dags"));
      if (body?.view_error) this.ctx.notice(`The status view cannot read the log (${body.view_error}): what you see may be stale.`);
      if (body) this.show(body);
    } finally {
      this.reading = false;
      if (this.again) {
        this.again = false;
        setTimeout(() => this.refresh(), 250);
      }
    }
  }

  show(body) {
    const shape = JSON.stringify(body.dags.map((d) => [d.name, d.nodes.map((n) => n.name), d.edges]));
    if (shape !== this.shape) {
      this.shape = shape;
      this.build(body);
    }
    for (const dag of body.dags) {
      for (const node of dag.nodes) this.updateNode(dag.name, node);
      replace(this.tables.get(dag.name), table(dag));
    }
  }

  build(body) {
    this.figures.clear();
    this.tables = new Map();
    replace(
      this.container,
      h("div", { class: "head" }, h("h1", {}, "DAGs"), h("span", { class: "muted" }, `as node ${body.node} sees the cluster`)),
      body.dags.length ? null : h("p", { class: "empty" }, "This node runs no DAG."),
      body.dags.map((dag) => {
        const tableEl = h("div");
        this.tables.set(dag.name, tableEl);
        return h(
          "section",
          { class: "panel" },
          h("div", { class: "head" }, h("h1", {}, dag.name), dag.description ? h("span", { class: "muted" }, dag.description) : null),
          h("div", { class: "plate-wrap" }, this.graph(dag)),
          h("p", { class: "muted" }, `dead letters to ${dag.dead_letter_topic} · incomplete reports to ${dag.incomplete_topic}`),
          tableEl,
        );
      }),
    );
  }

  graph(dag) {
    const depth = depths(dag);
    const columns = [];
    for (const node of dag.nodes) (columns[depth.get(node.name)] ??= []).push(node);
    // Each column ordered by where its inputs sit (barycentre): fewer crossing edges.
    const inputsOf = new Map(dag.nodes.map((n) => [n.name, new Set(n.inputs ?? [])]));
    for (const [from, to] of dag.edges) inputsOf.get(to)?.add(from);
    const rowOf = new Map();
    columns.forEach((col, c) => {
      if (c > 0) {
        const centre = (n) => {
          const rows = [...inputsOf.get(n.name)].map((i) => rowOf.get(i)).filter((r) => r !== undefined);
          return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Infinity;
        };
        col.sort((a, b) => centre(a) - centre(b));
      }
      col.forEach((n, r) => rowOf.set(n.name, r));
    });
    const pos = new Map();
    let height = 0;
    columns.forEach((col, c) => {
      col.forEach((node, r) => pos.set(node.name, { x: 8 + c * (NODE_W + COL_GAP), y: 8 + r * (NODE_H + ROW_GAP) }));
      height = Math.max(height, col.length * (NODE_H + ROW_GAP));
    });
    const width = 16 + columns.length * (NODE_W + COL_GAP) - COL_GAP;
    const svg = h("svg:svg", { class: "dag-svg", viewBox: `0 0 ${width} ${height + 8}`, role: "img", "aria-label": `Graph of ${dag.name}` });
    svg.style.maxWidth = `${width}px`;
    const marker = h("svg:marker", { id: `arrow-${cssId(dag.name)}`, viewBox: "0 0 8 8", refX: "8", refY: "4", markerWidth: "7", markerHeight: "7", orient: "auto" }, h("svg:path", { d: "M0,0 L8,4 L0,8 z" }));
    svg.append(h("svg:defs", {}, marker));
    for (const [from, to] of dag.edges) {
      const a = pos.get(from);
      const b = pos.get(to);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x;
      const y2 = b.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      svg.append(h("svg:path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, "marker-end": `url(#arrow-${cssId(dag.name)})` }));
    }
    for (const node of dag.nodes) {
      const { x, y } = pos.get(node.name);
      const line1 = h("svg:text", { class: "figures", x: "10", y: "46" });
      const line2 = h("svg:text", { class: "figures", x: "10", y: "60" });
      const line3 = h("svg:text", { class: "figures", x: "10", y: "74" });
      const title = h("svg:title");
      const group = h(
        "svg:g",
        { class: "node", transform: `translate(${x},${y})`, "data-node": node.name },
        title,
        h("svg:rect", { width: String(NODE_W), height: String(NODE_H - 4) }),
        h("svg:text", { x: "10", y: "17" }, truncate(node.name, 28)),
        h("svg:text", { class: "kind", x: "10", y: "31" }, h("svg:tspan", { class: "k" }, node.kind), node.topic ? ` → ${truncate(node.topic, 22)}` : ""),
        line1,
        line2,
        line3,
      );
      this.figures.set(`${dag.name}/${node.name}`, { line1, line2, line3, group, title });
      svg.append(group);
    }
    return svg;
  }

  updateNode(dagName, node) {
    const f = this.figures.get(`${dagName}/${node.name}`);
    if (!f) return;
    f.line1.textContent = `in ${count(node.records_in)} · out ${count(node.records_out)} · ${number(node.rate, 2)}/s`;
    replace(
      f.line2,
      `in flight ${count(node.in_flight)} · `,
      h("svg:tspan", { class: node.retries ? "warn" : null }, `retries ${count(node.retries)}`),
    );
    replace(
      f.line3,
      h("svg:tspan", { class: node.dead_letters ? "bad" : null }, `✕ ${count(node.dead_letters)} dead`),
      node.consumer_lag === null || node.consumer_lag === undefined ? "" : ` · lag ${count(node.consumer_lag)}`,
    );
    f.group.classList.toggle("bad", node.dead_letters > 0);
    f.group.classList.toggle("warn", !node.dead_letters && node.retries > 0);
    f.title.textContent = `${node.name} (${node.kind})\nrecords in ${node.records_in}, out ${node.records_out}, ${node.rate}/s\nin flight ${node.in_flight}, retries ${node.retries}, dead letters ${node.dead_letters}${node.consumer_lag === null ? "" : `, lag ${node.consumer_lag}`}`;
  }
}

function table(dag) {
  const cols = ["node", "kind", "in", "out", "rate/s", "in flight", "retries", "dead letters", "lag", "shards"];
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, cols.map((c, i) => h("th", { class: i >= 2 && i <= 8 ? "num" : null }, c)))),
    h(
      "tbody",
      {},
      dag.nodes.map((n) =>
        h(
          "tr",
          { "data-node": n.name },
          h("td", {}, n.name),
          h("td", { class: "muted" }, n.kind),
          h("td", { class: "num" }, count(n.records_in)),
          h("td", { class: "num" }, count(n.records_out)),
          h("td", { class: "num" }, number(n.rate, 2)),
          h("td", { class: "num" }, count(n.in_flight)),
          h("td", { class: "num" }, count(n.retries)),
          h("td", { class: "num" }, n.dead_letters ? h("a", { class: "bad-text", href: `#/dead-letters?node=${encodeURIComponent(n.name)}` }, count(n.dead_letters)) : "0"),
          h("td", { class: "num" }, n.consumer_lag === null || n.consumer_lag === undefined ? "–" : count(n.consumer_lag)),
          h("td", { class: "mono" }, Object.entries(n.shards ?? {}).map(([owner, parts]) => `${owner}: ${parts.length ? ranges(parts) : "none"}`).join("; ") || "–"),
        ),
      ),
    ),
  );
}

/** Depth of each node: the longest path from a node without inputs. */
function depths(dag) {
  const inputs = new Map(dag.nodes.map((n) => [n.name, new Set(n.inputs ?? [])]));
  for (const [from, to] of dag.edges) inputs.get(to)?.add(from);
  const depth = new Map();
  const visit = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name)) return 0; // a cycle (validation refuses them): do not loop
    seen.add(name);
    let d = 0;
    for (const i of inputs.get(name) ?? []) if (inputs.has(i)) d = Math.max(d, visit(i, seen) + 1);
    depth.set(name, d);
    return d;
  };
  for (const n of dag.nodes) visit(n.name);
  return depth;
}

/** "0-3,6" for [0,1,2,3,6]. */
function ranges(parts) {
  const sorted = [...parts].sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i < sorted.length; i++) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    out.push(j > i ? `${sorted[i]}-${sorted[j]}` : `${sorted[i]}`);
    i = j;
  }
  return out.join(",");
}

function truncate(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function cssId(s) {
  return s.replace(/[^A-Za-z0-9_-]/g, "_");
}
