// Small DOM helpers. Everything the dashboard shows goes through `h`, which sets text with
// text nodes and attributes with setAttribute: data from the API is never parsed as HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'value' || key === 'checked' || key === 'selected') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** `h('a', {href: '#/x', class: 'btn'}, 'text', child, [more])` */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** Same as `h`, in the SVG namespace. */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

let uid = 0;
/** A document-unique id with a readable prefix. */
export function uniqueId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

// ---- formatting -----------------------------------------------------------------------------

export const STATUS_LABELS = {
  ACTIVE: 'Active',
  AWAITING_RETRY: 'Awaiting retry',
  FAILING: 'Failing',
  RETRY_LIMIT_REACHED: 'Retry limit reached',
  DISABLED: 'Disabled',
  PENDING: 'Pending',
  DELIVERING: 'Delivering',
  SUCCEEDED: 'Succeeded',
  FAILED: 'Failed',
  DISCARDED: 'Discarded',
  SUCCESS: 'Success',
  FAILURE: 'Failure',
};

const TONE = {
  ACTIVE: 'ok',
  SUCCEEDED: 'ok',
  SUCCESS: 'ok',
  AWAITING_RETRY: 'warn',
  PENDING: 'info',
  DELIVERING: 'info',
  FAILING: 'bad',
  FAILED: 'bad',
  FAILURE: 'bad',
  RETRY_LIMIT_REACHED: 'severe',
  DISABLED: 'off',
  DISCARDED: 'off',
};

/** A status pill: the text says it all, the colour only helps. */
export function badge(status, extra = {}) {
  return h(
    'span',
    { class: `badge tone-${TONE[status] || 'off'}`, 'data-status': status, ...extra },
    STATUS_LABELS[status] || status,
  );
}

export function fmtPercent(rate) {
  if (rate === null || rate === undefined) return '—';
  const pct = rate * 100;
  if (pct === 100 || pct === 0) return `${pct.toFixed(0)} %`;
  return `${pct >= 99 ? pct.toFixed(2) : pct.toFixed(1)} %`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function fmtInt(n) {
  if (n === null || n === undefined) return '—';
  return new Intl.NumberFormat().format(n);
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return '—';
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${+(s / 60).toFixed(1)} min`;
  if (s < 86400) return `${+(s / 3600).toFixed(1)} h`;
  return `${+(s / 86400).toFixed(1)} d`;
}

const absolute = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric',
  hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

export function relative(iso, now = Date.now()) {
  const t = Date.parse(iso);
  const d = Math.round((t - now) / 1000);
  const a = Math.abs(d);
  let text;
  if (a < 5) return 'just now';
  if (a < 60) text = `${a} s`;
  else if (a < 3600) text = `${Math.round(a / 60)} min`;
  else if (a < 86400) text = `${Math.round(a / 3600)} h`;
  else text = `${Math.round(a / 86400)} d`;
  return d < 0 ? `${text} ago` : `in ${text}`;
}

/** A `<time>` showing "3 min ago", with the exact time in its title and datetime. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: iso, title: absolute.format(new Date(iso)) }, relative(iso));
}

/** A `<time>` showing the wall-clock time (for the live tail). */
export function clockTime(iso) {
  return h('time', { datetime: iso, title: absolute.format(new Date(iso)) }, clock.format(new Date(iso)));
}

export function absoluteTime(iso) {
  return iso ? absolute.format(new Date(iso)) : '—';
}

/** `<dl>` from [term, description] pairs; null descriptions show a dash. */
export function defList(pairs, cls = 'props') {
  return h('dl', { class: cls }, pairs.map(([term, desc]) => [
    h('dt', null, term),
    h('dd', null, desc === null || desc === undefined || desc === '' ? h('span', { class: 'muted' }, '—') : desc),
  ]));
}

export function shortId(id) {
  return id ? id.slice(-8) : '';
}

/** Calls `fn` at most once per `ms`, trailing. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return (...args) => {
    const wait = Math.max(0, last + ms - Date.now());
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn(...args);
    }, wait);
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/**
 * Runs `fn` with `btn` marked busy. aria-disabled rather than disabled, so that keyboard
 * focus stays on the button; clicks while busy are ignored.
 */
export async function whileBusy(btn, busyText, fn) {
  if (btn.getAttribute('aria-disabled') === 'true') return undefined;
  const text = btn.textContent;
  btn.setAttribute('aria-disabled', 'true');
  if (busyText) btn.textContent = busyText;
  try {
    return await fn();
  } finally {
    btn.removeAttribute('aria-disabled');
    if (busyText) btn.textContent = text;
  }
}
