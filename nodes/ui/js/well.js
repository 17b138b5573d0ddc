// A well's detail beside the plate map: its sites × channels (what is in, what is
// missing), each task's output state, its QC values, its dead letters with their reasons
// and trace ids.

import { badge, count, h, number, replace, time } from "./dom.js";

export function renderWell(panel, { well, plate, experiment, deadLetters, close }) {
  const sites = experiment?.sites_per_well || Math.max(0, ...(well.sites ?? []).map((s) => s.site));
  const channels =
    experiment?.channels_per_site ||
    Math.max(0, ...(well.sites ?? []).flatMap((s) => [...s.channels_present, ...s.channels_missing]));
  const bySite = new Map((well.sites ?? []).map((s) => [s.site, s]));
  const key = `/${plate.plate}/${well.well}/`;
  const reports = (experiment?.incomplete ?? []).filter((r) => r.key.includes(key) || r.key.endsWith(`/${plate.plate}/${well.well}`));
  const missing = [];
  // A site still filling is not missing anything yet; one reported incomplete is.
  for (const s of well.sites ?? []) if (s.state === "incomplete") for (const c of s.channels_missing) missing.push(`channel ${c} of site ${s.site}`);
  for (const r of reports) for (const m of r.missing) if (!missing.some((x) => m.startsWith(x))) missing.push(m);
  const traces = [...new Set([well.trace_id, ...deadLetters.map((d) => d.trace_id)].filter(Boolean))];

  replace(
    panel,
    h(
      "div",
      { class: "head" },
      h("h1", {}, `Well ${well.well}`),
      badge(well.state),
      h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: close, "aria-label": "Close the well's detail" }, "✕"),
    ),
    h(
      "dl",
      {},
      h("dt", {}, "images"),
      h("dd", {}, `${count(well.images.present)} of ${count(well.images.expected)}`),
      h("dt", {}, "first image"),
      h("dd", {}, time(well.first_image_ms)),
      h("dt", {}, "last image"),
      h("dd", {}, time(well.last_image_ms)),
      h("dt", {}, "trace id"),
      h("dd", { class: "mono" }, traces.length ? traces.join(" ") : h("span", { class: "muted" }, "none recorded")),
    ),
    h("h2", {}, "Sites × channels"),
    sites && channels ? matrix(sites, channels, bySite) : h("p", { class: "muted" }, "No layout for this well yet."),
    h("h2", {}, "Missing"),
    missing.length
      ? h("ul", { class: "alerts" }, missing.map((m) => h("li", { class: "bad" }, m)))
      : h("p", { class: "muted" }, well.state === "complete" ? "Nothing: every image is in." : "Nothing reported missing yet."),
    h("h2", {}, "Tasks"),
    (well.tasks ?? []).length
      ? h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "task"), h("th", {}, "state"), h("th", { class: "num" }, "outputs"), h("th", { class: "num" }, "dead"))),
          h(
            "tbody",
            {},
            well.tasks.flatMap((t) => {
              const error = taskError(t, deadLetters);
              return [
                h(
                  "tr",
                  {},
                  h("td", { class: "nowrap" }, t.task),
                  h("td", {}, badge(t.state)),
                  h("td", { class: "num" }, `${count(t.present)}/${count(t.expected)}`),
                  h("td", { class: "num" }, count(t.dead_lettered)),
                ),
                // The error on a line of its own, under its task, across the table.
                error ? h("tr", { class: "task-error" }, h("td", { colspan: "4", class: "bad-text" }, error)) : null,
              ];
            }),
          ),
        )
      : h("p", { class: "muted" }, "No task outputs yet."),
    h("h2", {}, "QC"),
    Object.keys(well.qc ?? {}).length
      ? h(
          "table",
          {},
          h(
            "tbody",
            {},
            Object.entries(well.qc).map(([k, v]) => h("tr", {}, h("td", {}, k.replaceAll("_", " ")), h("td", { class: "num mono" }, number(v)))),
          ),
        )
      : h("p", { class: "muted" }, "No QC values yet."),
    h("h2", {}, `Dead letters (${count(deadLetters.length)})`),
    deadLetters.length
      ? h(
          "ul",
          { class: "alerts" },
          deadLetters.map((d) =>
            h(
              "li",
              { class: "bad" },
              h("div", {}, h("b", {}, d.node), " — ", d.reason),
              h(
                "div",
                { class: "muted mono" },
                [d.key, d.attempts ? `${d.attempts} attempts` : null, d.source_topic ? `${d.source_topic}[${d.source_partition}]@${d.source_offset}` : null, time(d.timestamp_ms)]
                  .filter(Boolean)
                  .join(" · "),
              ),
              d.trace_id ? h("div", { class: "mono" }, `trace ${d.trace_id}`) : null,
            ),
          ),
        )
      : h("p", { class: "muted" }, "None."),
  );
}

/** One row per site, one column per channel: ● in, ✕ missing (the site is reported incomplete), · not yet. */
function matrix(sites, channels, bySite) {
  const head = h("tr", {}, h("th", {}, "site"));
  for (let c = 1; c <= channels; c++) head.append(h("th", {}, `c${c}`));
  const body = h("tbody");
  for (let s = 1; s <= sites; s++) {
    const site = bySite.get(s);
    const row = h("tr", {}, h("th", {}, String(s)));
    for (let c = 1; c <= channels; c++) {
      if (site?.channels_present.includes(c)) row.append(h("td", { class: "have", title: `site ${s} channel ${c}: in` }, "●"));
      else if (site?.state === "incomplete" && site.channels_missing.includes(c)) row.append(h("td", { class: "miss", title: `site ${s} channel ${c}: missing` }, "✕"));
      else row.append(h("td", { class: "muted", title: `site ${s} channel ${c}: not yet` }, "·"));
    }
    body.append(row);
  }
  return h("table", { class: "matrix" }, h("thead", {}, head), body);
}

/** A task's error at this well: its own, else the reason of its latest dead letter here. */
function taskError(task, deadLetters) {
  return task.error ?? deadLetters.filter((d) => d.node === task.task).sort((a, b) => b.timestamp_ms - a.timestamp_ms)[0]?.reason ?? null;
}
