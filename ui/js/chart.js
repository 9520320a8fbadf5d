// Inline SVG charts: stacked bars (successes vs failures per bucket) and latency lines.
// Each chart is an <svg role="img"> with a text summary, plus the numbers as a table.

import { h, svg, uniqueId, fmtMs, fmtInt } from './dom.js';

const W = 720;
const H = 200;
const PAD = { top: 12, right: 12, bottom: 26, left: 48 };

const hhmm = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayHour = new Intl.DateTimeFormat(undefined, { weekday: 'short', hour: '2-digit', minute: '2-digit' });

/** Every bucket from `since` to `until`, with the server's points where it has them. */
export function fillBuckets(points, since, until, bucketMs) {
  const byStart = new Map(points.map((p) => [Math.floor(Date.parse(p.start) / bucketMs) * bucketMs, p]));
  const out = [];
  const first = Math.floor(since / bucketMs) * bucketMs;
  for (let t = first; t <= until; t += bucketMs) {
    const p = byStart.get(t);
    out.push({
      t,
      attempts: p?.attempts ?? 0,
      successes: p?.successes ?? 0,
      failures: p?.failures ?? 0,
      p50: p?.p50LatencyMs ?? null,
      p95: p?.p95LatencyMs ?? null,
    });
  }
  return out;
}

const TICKS = 4;

/** The top of the y axis: TICKS steps of 1, 2 or 5 × 10ⁿ (at least 1), covering `v`. */
function niceMax(v) {
  const raw = Math.max(v, 1) / TICKS;
  const exp = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) {
    const step = Math.max(1, m * exp);
    if (step * TICKS >= v) return step * TICKS;
  }
  return 10 * exp * TICKS;
}

function frame(yMax, yFormat, buckets, bucketMs) {
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const grid = [];
  for (let i = 0; i <= TICKS; i += 1) {
    const v = (yMax * i) / TICKS;
    const y = PAD.top + innerH - (innerH * i) / TICKS;
    grid.push(svg('line', { class: 'grid', x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }));
    grid.push(svg('text', { class: 'axis', x: PAD.left - 6, y: y + 4, 'text-anchor': 'end' }, yFormat(v)));
  }
  const n = buckets.length;
  const step = innerW / Math.max(n, 1);
  const every = Math.max(1, Math.ceil(n / 8));
  const fmt = bucketMs >= 3600000 && n > 24 ? dayHour : hhmm;
  const labels = [];
  for (let i = 0; i < n; i += every) {
    const x = PAD.left + step * i + step / 2;
    labels.push(svg('text', { class: 'axis', x, y: H - 8, 'text-anchor': 'middle' }, fmt.format(new Date(buckets[i].t))));
  }
  return { innerW, innerH, step, grid, labels };
}

function dataTable(caption, headers, rows) {
  return h('details', { class: 'chart-data' },
    h('summary', null, 'Show data as a table'),
    h('div', { class: 'table-wrap' },
      h('table', null,
        h('caption', { class: 'sr-only' }, caption),
        h('thead', null, h('tr', null, headers.map((x) => h('th', { scope: 'col' }, x)))),
        h('tbody', null, rows.map((r) => h('tr', null, r.map((c) => h('td', null, c))))))));
}

/** Stacked bars: successes (bottom) and failures (top, hatched) per bucket. */
export function attemptsChart(buckets, { bucketMs, unit }) {
  const total = buckets.reduce((a, b) => a + b.attempts, 0);
  const ok = buckets.reduce((a, b) => a + b.successes, 0);
  const bad = buckets.reduce((a, b) => a + b.failures, 0);
  const peak = buckets.reduce((m, b) => (b.attempts > m.attempts ? b : m), { attempts: 0, t: 0 });
  const yMax = niceMax(Math.max(...buckets.map((b) => b.successes + b.failures), 1));
  const f = frame(yMax, (v) => fmtInt(v), buckets, bucketMs);
  const hatch = uniqueId('hatch');
  const titleId = uniqueId('chart-title');
  const summary = total === 0
    ? `No attempts in this window.`
    : `${fmtInt(total)} attempts: ${fmtInt(ok)} succeeded, ${fmtInt(bad)} failed. Busiest ${unit}: ${hhmm.format(new Date(peak.t))} with ${fmtInt(peak.attempts)}.`;
  const bars = [];
  const barW = Math.max(1, f.step * 0.72);
  buckets.forEach((b, i) => {
    if (!b.successes && !b.failures) return;
    const x = PAD.left + f.step * i + (f.step - barW) / 2;
    const hs = (f.innerH * b.successes) / yMax;
    const hf = (f.innerH * b.failures) / yMax;
    const base = PAD.top + f.innerH;
    const label = `${hhmm.format(new Date(b.t))}: ${b.successes} succeeded, ${b.failures} failed`;
    bars.push(svg('g', { class: 'bar' },
      svg('title', null, label),
      b.successes ? svg('rect', { class: 'ok', x, y: base - hs, width: barW, height: hs }) : null,
      b.failures ? svg('rect', { class: 'fail', x, y: base - hs - hf, width: barW, height: hf, fill: `url(#${hatch})` }) : null));
  });
  const chart = svg('svg', {
    class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': titleId, 'data-chart': 'attempts',
  },
  svg('title', { id: titleId }, `Attempts per ${unit}. ${summary}`),
  svg('defs', null,
    svg('pattern', { id: hatch, width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
      svg('rect', { class: 'fail-bg', width: 6, height: 6 }),
      svg('line', { class: 'fail-line', x1: 0, y1: 0, x2: 0, y2: 6 }))),
  f.grid, f.labels, bars);
  const legend = h('ul', { class: 'legend', 'aria-hidden': 'true' },
    h('li', null, h('span', { class: 'swatch ok' }), 'Succeeded'),
    h('li', null, h('span', { class: 'swatch fail' }), 'Failed'));
  const rows = buckets.filter((b) => b.attempts).map((b) => [hhmm.format(new Date(b.t)), fmtInt(b.successes), fmtInt(b.failures)]);
  return h('figure', { class: 'chart-figure' },
    chart,
    h('figcaption', null, legend, h('p', { class: 'chart-summary' }, summary)),
    rows.length ? dataTable(`Attempts per ${unit}`, [unit === 'hour' ? 'Hour' : 'Minute', 'Succeeded', 'Failed'], rows) : null);
}

/** p50 and p95 latency lines; gaps where a bucket had no attempts. */
export function latencyChart(buckets, { bucketMs, unit }) {
  const values = buckets.flatMap((b) => [b.p50, b.p95]).filter((v) => v !== null);
  const yMax = niceMax(Math.max(...values, 1));
  const f = frame(yMax, (v) => fmtMs(v), buckets, bucketMs);
  const titleId = uniqueId('chart-title');
  const x = (i) => PAD.left + f.step * i + f.step / 2;
  const y = (v) => PAD.top + f.innerH - (f.innerH * v) / yMax;
  function line(key, cls) {
    let d = '';
    let pen = false;
    const dots = [];
    buckets.forEach((b, i) => {
      const v = b[key];
      if (v === null) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
      dots.push(svg('circle', { class: cls, cx: x(i), cy: y(v), r: 2.5 },
        svg('title', null, `${hhmm.format(new Date(b.t))}: ${key} ${fmtMs(v)}`)));
    });
    return [d ? svg('path', { class: `line ${cls}`, d }) : null, dots];
  }
  const withData = buckets.filter((b) => b.p95 !== null);
  const worst = withData.reduce((m, b) => (b.p95 > (m?.p95 ?? -1) ? b : m), null);
  const summary = worst
    ? `Highest p95: ${fmtMs(worst.p95)} at ${hhmm.format(new Date(worst.t))}.`
    : 'No latency data in this window.';
  const chart = svg('svg', {
    class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': titleId, 'data-chart': 'latency',
  },
  svg('title', { id: titleId }, `Response time per ${unit}, p50 and p95. ${summary}`),
  f.grid, f.labels, line('p50', 'p50'), line('p95', 'p95'));
  const legend = h('ul', { class: 'legend', 'aria-hidden': 'true' },
    h('li', null, h('span', { class: 'swatch p50' }), 'p50'),
    h('li', null, h('span', { class: 'swatch p95' }), 'p95'));
  const rows = withData.map((b) => [hhmm.format(new Date(b.t)), fmtMs(b.p50), fmtMs(b.p95)]);
  return h('figure', { class: 'chart-figure' },
    chart,
    h('figcaption', null, legend, h('p', { class: 'chart-summary' }, summary)),
    rows.length ? dataTable(`Response time per ${unit}`, [unit === 'hour' ? 'Hour' : 'Minute', 'p50', 'p95'], rows) : null);
}
