// Interactive plots (uPlot, vendored under /static/vendor) fed by the JSON API: hover
// values in the legend, drag to zoom (double-click resets), log scale, smoothing, and
// an x axis of rounds or wall-clock time. Without JavaScript the server's SVGs show.
(() => {
  "use strict";
  const main = document.querySelector("main[data-page]");
  if (!main || !window.uPlot || !document.getElementById("charts")) return;
  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#db2777", "#65a30d"];
  const KIND_COLORS = { central: PALETTE[0], federated: PALETTE[1], personalized: PALETTE[2] };
  const state = { xMode: "round", log: false, smooth: 0 };
  const built = new Map();  // chart element -> uPlot
  let specs = {};  // chart name -> spec; see draw()

  const getJSON = async (url) => {
    const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
    return resp.json();
  };
  const epoch = (iso) => (iso ? new Date(iso).getTime() / 1000 : null);
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const css = (name, fallback) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;

  // ---- series from the API ------------------------------------------------------
  // A series: { label, color, points: [{ round, t, y }], dots?: true (points only) }
  function evalSeries(evals, roundTime, field, kinds, labelOf, colorOf) {
    return kinds.map((kind) => ({
      label: labelOf(kind), color: colorOf(kind),
      points: evals.filter((e) => e.kind === kind && isNum(e[field]))
        .map((e) => ({ round: e.round_number, t: roundTime(e.round_number), y: e[field] })),
    })).filter((s) => s.points.length);
  }

  function roundSeries(rounds, label, color, value, roundTime) {
    const points = rounds.filter((r) => r.status === "committed" && isNum(value(r)))
      .map((r) => ({ round: r.number, t: roundTime(r.number), y: value(r) }));
    return points.length ? [{ label, color, points }] : [];
  }

  function roundMetricKeys(rounds) {
    const keys = new Set();
    for (const r of rounds) for (const [k, v] of Object.entries(r.metrics || {})) if (isNum(v)) keys.add(k);
    return Array.from(keys).sort();
  }

  function timeOf(run, rounds, elapsed) {
    const start = epoch(run.started_at);
    const at = new Map(rounds.filter((r) => r.status === "committed").map((r) => [r.number, epoch(r.finished_at)]));
    return (n) => {
      const t = n === 0 ? start : at.get(n) ?? null;
      return t === null || !elapsed ? t : t - start;
    };
  }

  async function runSpecs() {
    const id = main.dataset.run;
    const [run, evals, rounds] = await Promise.all([
      getJSON(`/api/runs/${id}`), getJSON(`/api/runs/${id}/evaluations`), getJSON(`/api/runs/${id}/rounds`),
    ]);
    const at = timeOf(run, rounds.data, false);
    const kinds = Object.keys(KIND_COLORS);
    const out = {
      accuracy: { percent: true, series: evalSeries(evals.data, at, "accuracy", kinds, (k) => k, (k) => KIND_COLORS[k]) },
      loss: { series: [
        ...evalSeries(evals.data, at, "loss", kinds, (k) => `${k} loss`, (k) => KIND_COLORS[k]),
        ...roundSeries(rounds.data, "train loss", PALETTE[3], (r) => r.metrics?.["train-loss"], at),
      ] },
      durations: { unit: "s", zero: true, cap: true, series: [
        ...roundSeries(rounds.data, "total", PALETTE[0], (r) => r.duration_s, at),
        ...["send", "wait", "merge", "evaluate"].flatMap((p, i) =>
          roundSeries(rounds.data, p, PALETTE[i + 3], (r) => r[`${p}_s`], at)),
      ] },
    };
    for (const key of roundMetricKeys(rounds.data).filter((k) => k !== "train-loss")) {
      out[`metric-${key}`] = { title: key, series: roundSeries(rounds.data, key, PALETTE[4], (r) => r.metrics[key], at) };
    }
    return out;
  }

  async function compareSpecs() {
    const ids = main.dataset.runs.split(",");
    const runs = await Promise.all(ids.map(async (id, i) => {
      const [run, evals, rounds] = await Promise.all([
        getJSON(`/api/runs/${id}`), getJSON(`/api/runs/${id}/evaluations`), getJSON(`/api/runs/${id}/rounds`),
      ]);
      return { run, evals: evals.data, rounds: rounds.data, color: PALETTE[i % PALETTE.length], at: timeOf(run, rounds.data, true) };
    }));
    const label = (r) => `${r.run.id.slice(0, 8)} ${r.run.name}`;
    const out = {
      accuracy: { percent: true, series: runs.flatMap((r) => evalSeries(r.evals, r.at, "accuracy", ["central"], () => label(r), () => r.color)) },
      loss: { series: runs.flatMap((r) => evalSeries(r.evals, r.at, "loss", ["central"], () => label(r), () => r.color)) },
      durations: { unit: "s", zero: true, series: runs.flatMap((r) => roundSeries(r.rounds, label(r), r.color, (x) => x.duration_s, r.at)) },
    };
    const keys = new Set(runs.flatMap((r) => roundMetricKeys(r.rounds)));
    for (const key of Array.from(keys).sort()) {
      out[`metric-${key}`] = { title: key, series: runs.flatMap((r) => roundSeries(r.rounds, label(r), r.color, (x) => x.metrics?.[key], r.at)) };
    }
    return out;
  }

  async function clientSpecs() {
    const { run: id, node } = main.dataset;
    const [run, rounds, client] = await Promise.all([
      getJSON(`/api/runs/${id}`), getJSON(`/api/runs/${id}/rounds`), getJSON(`/api/runs/${id}/clients/${node}`),
    ]);
    const at = timeOf(run, rounds.data, false);
    const point = (u, y) => ({ round: u.round_number, t: at(u.round_number), y });
    const offsets = client.rounds.filter((u) => isNum(u.offset_norm));
    const keys = Array.from(new Set(client.rounds.flatMap((u) => Object.keys(u.metrics).filter((k) => isNum(u.metrics[k]))))).sort();
    return {
      offset: { zero: true, series: [
        { label: "offset norm", color: PALETTE[0], points: offsets.map((u) => point(u, u.offset_norm)) },
        { label: "dropped", color: PALETTE[4], dots: true, points: offsets.filter((u) => !u.accepted).map((u) => point(u, u.offset_norm)) },
      ].filter((s) => s.points.length) },
      metrics: { series: keys.map((k, i) => ({
        label: k, color: PALETTE[(i + 1) % PALETTE.length],
        points: client.rounds.filter((u) => isNum(u.metrics[k])).map((u) => point(u, u.metrics[k])),
      })) },
    };
  }

  // ---- drawing ---------------------------------------------------------------------
  function smooth(ys, alpha) {
    if (!alpha) return ys;
    let acc = null;
    return ys.map((y) => (y === null ? null : (acc = acc === null ? y : alpha * acc + (1 - alpha) * y)));
  }

  function aligned(series) {
    const key = state.xMode === "round" ? "round" : "t";
    const xs = Array.from(new Set(series.flatMap((s) => s.points.map((p) => p[key])).filter(isNum))).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const columns = series.map((s) => {
      const ys = new Array(xs.length).fill(null);
      for (const p of s.points) if (isNum(p[key])) ys[index.get(p[key])] = p.y;
      const shown = s.dots ? ys : smooth(ys, state.smooth);
      return state.log ? shown.map((y) => (y !== null && y > 0 ? y : null)) : shown;
    });
    return [xs, ...columns];
  }

  // Round 1 carries the engine's start-up: a lone tall round is cut off (zoom or log
  // scale shows it) rather than squashing every other round to a sliver.
  function outlierCap(spec) {
    const ys = spec.series[0]?.points.map((p) => p.y).sort((a, b) => a - b) || [];
    if (ys.length < 3) return Infinity;
    return Math.max(ys[Math.floor(ys.length / 2)] * 4, ys[ys.length - 2] * 1.05);
  }

  function figureFor(name, spec) {
    let el = document.querySelector(`.chart[data-chart="${name}"]`);
    if (!el) {
      const figure = document.createElement("figure");
      figure.className = "plot";
      figure.id = `plot-${name}`;
      el = document.createElement("div");
      el.className = "chart";
      el.dataset.chart = name;
      el.dataset.title = spec.title || name;
      figure.append(el);
      document.getElementById("charts").append(figure);
    }
    return el;
  }

  function options(el, spec) {
    const ink = css("--muted", "#64748b");
    const grid = css("--line", "#e2e8f0");
    const rounds = state.xMode === "round";
    const elapsed = main.dataset.page === "compare";
    const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
    const fmt = (v) => (v === null || v === undefined ? "–" : spec.percent && !state.log ? `${(100 * v).toFixed(1)}%` : `${+v.toPrecision(4)}${spec.unit ? ` ${spec.unit}` : ""}`);
    return {
      title: el.dataset.title,
      width: Math.max(320, el.clientWidth || 600),
      height: 260,
      cursor: { drag: { x: true, y: false }, points: { size: 7 } },
      scales: {
        x: {
          time: !rounds && !elapsed,
          range: rounds ? (u, min, max) => [Math.min(0, Math.floor(min ?? 0)), Math.max(1, Math.ceil(max ?? 1))] : undefined,
        },
        y: {
          distr: state.log ? 3 : 1,
          range: state.log ? undefined : (u, min, max) => {
            if (spec.percent) return [0, 1];
            const lo = spec.zero ? 0 : Math.min(0, min ?? 0);
            const hi = isNum(max) && max > lo ? Math.min(max, spec.cap ? outlierCap(spec) : max) * 1.08 : lo + 1;
            return [lo, hi];
          },
        },
      },
      axes: [
        { ...axis, label: rounds ? "round" : elapsed ? "seconds since start" : "time",
          ...(rounds ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], values: (u, vs) => vs.map((v) => (v == null ? "" : String(Math.round(v)))) } : {}),
          ...(elapsed && !rounds ? { values: (u, vs) => vs.map((v) => (v == null ? "" : `${Math.round(v)} s`)) } : {}) },
        { ...axis, size: 60, values: (u, vs) => vs.map((v) => (v == null ? "" : spec.percent && !state.log ? `${Math.round(100 * v)}%` : `${+v.toPrecision(3)}`)) },
      ],
      series: [
        { label: rounds ? "round" : "time", value: (u, v) => (v === null ? "–" : rounds ? String(v) : elapsed ? `${Math.round(v)} s` : new Date(v * 1000).toLocaleTimeString()) },
        ...spec.series.map((s) => ({
          label: s.label, stroke: s.color, width: 2, spanGaps: true, value: (u, v) => fmt(v),
          points: { show: true, size: s.dots ? 9 : 5, fill: s.color },
          ...(s.dots ? { paths: () => null } : {}),
        })),
      ],
    };
  }

  function draw() {
    for (const plot of built.values()) plot.destroy();
    built.clear();
    for (const [name, spec] of Object.entries(specs)) {
      const el = figureFor(name, spec);
      el.closest("figure")?.classList.add("has-chart");
      el.dataset.points = JSON.stringify(Object.fromEntries(spec.series.map((s) => [s.label, s.points.length])));
      if (!spec.series.length) {
        el.textContent = `${el.dataset.title}: no data yet.`;
        el.classList.add("chart-empty");
        continue;
      }
      el.textContent = "";
      el.classList.remove("chart-empty");
      built.set(el, new uPlot(options(el, spec), aligned(spec.series), el));
    }
  }

  async function load() {
    const make = { run: runSpecs, compare: compareSpecs, client: clientSpecs }[main.dataset.page];
    if (!make) return;
    try {
      specs = await make();
      draw();
    } catch (err) {
      console.debug("charts not drawn:", err);
    }
  }

  const tools = document.querySelector("[data-chart-tools]");
  if (tools) {
    tools.querySelector("[data-x-mode]").addEventListener("change", (e) => { state.xMode = e.target.value; draw(); });
    tools.querySelector("[data-log]").addEventListener("change", (e) => { state.log = e.target.checked; draw(); });
    tools.querySelector("[data-smooth]").addEventListener("input", (e) => { state.smooth = Number(e.target.value); draw(); });
  }
  let resizeTimer = null;
  const widthChanged = () => Array.from(built, ([el, plot]) => Math.abs(el.clientWidth - plot.width) > 8).some(Boolean);
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (widthChanged()) draw(); }, 200);
  });
  window.fedmerge = Object.assign(window.fedmerge || {}, { charts: built });  // for tests and the console
  document.addEventListener("fedmerge:changed", load);
  load();
})();
