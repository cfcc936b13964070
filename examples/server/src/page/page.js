// The live page: polls /stats.json (what `STATS JSON` answers) once a second, shows the
// §10 dump as tables and charts the last samples, kept here in the browser. Hand-written
// SVG, no framework and nothing fetched from elsewhere (docs/DECISIONS.md, the live page).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;
const KEPT = Number(document.body.dataset.samples) || 600;
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2",
  "#65a30d", "#9333ea", "#ea580c", "#475569"];
const WIDTH = 560, HEIGHT = 180, LEFT = 48, RIGHT = 8, TOP = 8, BOTTOM = 20;

/**
 * Samples, oldest first: {t, pays, declines: {reason: n}, buckets: [..], epochs, queues},
 * `t` the server's clock when it took the numbers, so rates are per its seconds.
 */
const samples = [];

function number(value) {
  return typeof value === "number" ? value.toLocaleString("en-US") : String(value ?? "-");
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function fillTable(table, head, rows) {
  table.replaceChildren();
  const header = table.insertRow();
  for (const cell of head) header.appendChild(element("th", cell));
  for (const row of rows) {
    const line = table.insertRow();
    for (const cell of row) line.appendChild(element("td", number(cell)));
  }
}

/** Rows of the §10 regions table, TOTAL last. */
function regionRows(stats) {
  const rows = Object.entries(stats.regions).map(([name, region]) => [name, region]);
  rows.push(["TOTAL", stats.total]);
  return rows;
}

function renderDump(stats) {
  const regions = regionRows(stats);
  fillTable(document.getElementById("regions"),
    ["region", "profiles", "checking", "savings", "balances", "approved", "approved volume",
      "near ceiling", "held", "open holds", "expiring", "rolled day", "epochs"],
    regions.map(([name, r]) => [name, r.profiles, r.accounts.CHECKING, r.accounts.SAVINGS,
      r.balances_minor, r.payments_approved.count, r.payments_approved.volume_minor,
      r.cards_near_ceiling, r.held_minor, r.open_holds, r.holds_expiring,
      r.rolled_day ?? "none", stats.epochs_completed[name] ?? ""]));
  const reasons = Object.keys(stats.total.declined);
  fillTable(document.getElementById("declines"), ["reason", ...regions.map(([name]) => name)],
    reasons.map((reason) => [reason, ...regions.map(([, r]) => {
      const d = r.declined[reason];
      return `${number(d.count)} / ${number(d.volume_minor)}`;
    })]));
  const audit = stats.audit;
  const audited = document.getElementById("audit");
  audited.textContent = `in flight ${number(audit.in_flight_minor)}, held ` +
    `${number(audit.held_minor)}, conservation ` +
    `${audit.holds ? "ok" : "BROKEN"} (balances ${number(audit.balances_minor)}, initial ` +
    `${number(audit.initial_deposits_minor)} + deposits ${number(audit.deposits_minor)} + ` +
    `interest ${number(audit.interest_minor)} - card payments ` +
    `${number(audit.card_payments_minor)})`;
  audited.className = audit.holds ? "" : "broken";
  fillTable(document.getElementById("shards"),
    ["shard", "accounts", "queue", "internal", "commands", "commands/s", "mean batch",
      "inline %", "busy s", "service µs p50/99/999"],
    stats.shards.map((s) => [s.shard, s.accounts, s.queue_depth, s.internal_depth,
      s.commands, s.commands_per_s, s.mean_batch,
      s.batches ? Math.round(1000 * s.inline_batches / s.batches) / 10 : 0,
      Math.round(s.busy_ns / 1e6) / 1e3,
      `${s.service_us_p50}/${s.service_us_p99}/${s.service_us_p999}`]));
  fillTable(document.getElementById("commands"), ["kind", "done", "declined"],
    Object.entries(stats.commands).map(([kind, c]) => [kind, c.done, c.declined]));
  const storage = stats.storage;
  document.getElementById("storage").textContent = storage
    ? `log written ${number(storage.log_written_bytes)} B, archived ` +
      `${number(storage.archived_bytes)} B, tables ${number(storage.log_table_bytes)} B ` +
      `(ids ${number(storage.ids_table_bytes)} B, about ` +
      `${number(storage.remembered_on_disk_estimate)} ids on disk); group commits ` +
      `${number(storage.group_commits)}, ${storage.mean_group_batches} batches each, ` +
      `p50/p99 ${storage.group_commit_us_p50}/${storage.group_commit_us_p99} µs; WAL fsync ` +
      `p50/p99 ${storage.wal_fsync_us_p50}/${storage.wal_fsync_us_p99} µs`
    : "durability none: no store";
  const c = stats.checkpoint;
  document.getElementById("checkpoint").textContent =
    `remembered ids in memory ${number(stats.remembered_in_memory)}, in flight ` +
    `${number(stats.ids_in_flight)}; checkpoints written ${number(c.written)}` +
    (c.completed_ms ? `, last ${new Date(c.completed_ms).toISOString()} (` +
      `${number(c.bytes)} B, ${c.seconds} s)` : "") +
    (c.error ? `, last failure: ${c.error}` : "");
  const guard = stats.clock_guard;
  document.getElementById("clock").textContent = !guard
    ? "clock guard: off (the clock is not the guarded system clock)"
    : guard.refused
      ? `clock guard: REFUSING A JUMP of ${guard.refused.ahead_ms} ms; CLOCK.ACCEPT takes it`
      : `clock guard: on, jumps refused ${guard.jumps_refused}`;
}

/** What the charts need of one answer. */
function sampleOf(stats, t) {
  const declines = {};
  for (const [reason, d] of Object.entries(stats.total.declined)) declines[reason] = d.count;
  const buckets = [];
  for (const shard of stats.shards) {
    shard.service_us_buckets.forEach((count, i) => { buckets[i] = (buckets[i] || 0) + count; });
  }
  const pay = stats.commands.pay;
  return { t, pays: pay.done + pay.declined, declines, buckets,
    epochs: { ...stats.epochs_completed }, queues: stats.shards.map((s) => s.queue_depth) };
}

/** The upper bound (µs) of the bucket holding `quantile` of the batches counted. */
function quantileBound(counts, quantile) {
  const total = counts.reduce((sum, count) => sum + count, 0);
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(total * quantile));
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= rank) return 2 ** i;
  }
  return 2 ** (counts.length - 1);
}

/** Per second between consecutive samples: `pick(sample) -> number`. */
function rate(pick) {
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    if (dt > 0) points.push([samples[i].t, Math.max(0, pick(samples[i]) - pick(samples[i - 1])) / dt]);
  }
  return points;
}

function level(pick) {
  return samples.map((sample) => [sample.t, pick(sample)]);
}

function latency(quantile) {
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const now = samples[i].buckets, then = samples[i - 1].buckets;
    const delta = now.map((count, b) => count - (then[b] || 0));
    const bound = quantileBound(delta, quantile);
    if (bound !== null) points.push([samples[i].t, bound]);
  }
  return points;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(value) {
  if (value >= 1e6) return `${Math.round(value / 1e5) / 10}M`;
  if (value >= 1e3) return `${Math.round(value / 100) / 10}k`;
  return String(Math.round(value * 10) / 10);
}

function span(ms) {
  if (ms >= 60000) return `${Math.round(ms / 6000) / 10} min`;
  return ms >= 10000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 100) / 10} s`;
}

/** Draws `series` ([{name, points: [[t, v]]}]) over the samples kept (up to KEPT). */
function chart(id, series) {
  const node = document.getElementById(id);
  const now = samples[samples.length - 1].t;
  const start = samples[0].t < now ? samples[0].t : now - POLL_MS;
  const max = Math.max(1, ...series.flatMap((s) => s.points.map(([, v]) => v)));
  const x = (t) => LEFT + (WIDTH - LEFT - RIGHT) * (t - start) / (now - start);
  const y = (v) => HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * v / (max * 1.1);
  node.replaceChildren();
  for (const fraction of [0, 0.5, 1]) {
    const v = max * fraction;
    node.appendChild(svg("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(v), y2: y(v), class: "grid" }));
    node.appendChild(svg("text", { x: LEFT - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" },
      short(v)));
  }
  for (const [t, anchor] of [[start, "start"], [(start + now) / 2, "middle"], [now, "end"]]) {
    node.appendChild(svg("text", { x: x(t), y: HEIGHT - 4, "text-anchor": anchor, class: "axis" },
      t === now ? "now" : `-${span(now - t)}`));
  }
  let drawn = 0;
  series.forEach((s, i) => {
    const points = s.points.filter(([t]) => t >= start);
    drawn += points.length;
    const color = COLORS[i % COLORS.length];
    node.appendChild(svg("polyline", { stroke: color,
      points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }));
  });
  node.dataset.points = String(drawn);
  const legend = node.parentElement.querySelector(".legend");
  legend.replaceChildren(...series.map((s, i) => {
    const item = element("span", s.name);
    const swatch = element("i");
    swatch.style.background = COLORS[i % COLORS.length];
    item.prepend(swatch);
    return item;
  }));
}

function renderCharts() {
  const last = samples[samples.length - 1];
  chart("chart-payments", [{ name: "payments/s", points: rate((s) => s.pays) }]);
  const reasons = Object.keys(last.declines).filter((reason) =>
    samples.some((s) => s.declines[reason] !== samples[0].declines[reason]));
  chart("chart-declines", reasons.map((reason) =>
    ({ name: reason, points: rate((s) => s.declines[reason] || 0) })));
  chart("chart-latency", [{ name: "p50", points: latency(0.5) },
    { name: "p99", points: latency(0.99) }]);
  chart("chart-epochs", Object.keys(last.epochs).map((region) =>
    ({ name: region, points: level((s) => s.epochs[region] || 0) })));
  chart("chart-queues", last.queues.map((_, shard) =>
    ({ name: `shard ${shard}`, points: level((s) => s.queues[shard] || 0) })));
}

function setFigure(id, value) {
  const node = document.getElementById(id);
  node.textContent = number(value);
  node.dataset.value = String(value);
}

function show(stats) {
  const health = document.getElementById("health");
  const ok = stats.health.state === "ok";
  health.textContent = ok ? "health: ok" : `STORAGE FAILED: ${stats.health.reason}`;
  health.className = `health ${ok ? "ok" : "failed"}`;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  if (!ok) return;
  samples.push(sampleOf(stats, stats.unix_ms));
  if (samples.length > KEPT) samples.shift();
  const last = samples[samples.length - 1];
  setFigure("payments-total", last.pays);
  const pays = rate((s) => s.pays);
  setFigure("payments-rate", pays.length ? Math.round(pays[pays.length - 1][1]) : 0);
  renderDump(stats);
  renderCharts();
}

async function poll() {
  try {
    const response = await fetch("/stats.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    show(await response.json());
  } catch (error) {
    const health = document.getElementById("health");
    health.textContent = `unreachable: ${error.message}`;
    health.className = "health failed";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
