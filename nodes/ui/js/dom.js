// Small DOM and formatting helpers shared by the views. No framework: views build
// elements with h() once and update their attributes and text in place.

/** An element: h("td", {class: "num"}, "12"); attributes starting with "on" are listeners. */
export function h(tag, attributes = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** The words for each state (never colour alone: a word and a glyph go with it). */
export const STATES = {
  waiting: { label: "waiting", glyph: "·" },
  partial: { label: "partial", glyph: "◐" },
  complete: { label: "complete", glyph: "●" },
  incomplete: { label: "incomplete", glyph: "!" },
  dead_lettered: { label: "dead-lettered", glyph: "✕" },
  not_in_use: { label: "not in use", glyph: " " },
  in_flight: { label: "in flight", glyph: "◐" },
  done: { label: "done", glyph: "●" },
};

export function stateLabel(state) {
  return STATES[state]?.label ?? String(state).replaceAll("_", " ");
}

/** A state badge: glyph and word on the state's colour. */
export function badge(state) {
  const s = STATES[state];
  return h("span", { class: "state", "data-state": state }, s ? `${s.glyph} ${s.label}` : stateLabel(state));
}

const integer = new Intl.NumberFormat("en-US");
export function count(n) {
  return n === null || n === undefined ? "–" : integer.format(n);
}

export function number(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const abs = Math.abs(x);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return x.toExponential(2);
  return Number(x.toPrecision(digits + 1)).toString();
}

export function percent(part, whole) {
  if (!whole) return "–";
  return `${((100 * part) / whole).toFixed(part === whole ? 0 : 1)}%`;
}

/** A time in the operator's zone, with seconds; "–" when unknown. */
export function time(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour12: false })
    : d.toLocaleString([], { hour12: false });
}

/** How long ago, in words an operator reads at a glance. */
export function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 2) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** "A" .. "Z", "AA" .. "AF": row labels of plates up to 1536 wells (32 rows). */
export function rowName(row) {
  let name = "";
  let n = row;
  do {
    name = String.fromCharCode(65 + (n % 26)) + name;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return name;
}

/** Fires fn at most once per animation frame, with everything queued since. */
export function frameBatcher(apply) {
  let queued = new Map();
  let scheduled = false;
  return (key, value) => {
    queued.set(key, value);
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      const batch = queued;
      queued = new Map();
      scheduled = false;
      apply(batch);
    });
  };
}
