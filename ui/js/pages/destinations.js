// Destinations: status, last-24-hour success rate and p95, enable/disable.

import { gql, live } from '../api.js';
import { badge, debounce, fmtInt, fmtMs, fmtPercent, h, whileBusy } from '../dom.js';

const LIST = `query Destinations($first: Int!, $after: String, $filter: DestinationFilter, $since: DateTime!) {
  destinations(first: $first, after: $after, filter: $filter) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      id name displayName url enabled status
      failureDetails { consecutiveFailures lastFailedReason }
      stats(since: $since) { totalAttempts successRate p95ResponseTimeMs pendingDeliveries }
    }
  }
}`;

export const TOGGLE = {
  enable: `mutation Enable($id: ID!) { enableDestination(id: $id) { id enabled status } }`,
  disable: `mutation Disable($id: ID!) { disableDestination(id: $id) { id enabled status } }`,
};

const STATUS_CHANGES = `subscription Statuses { destinationStatusChanged { destinationId status enabled } }`;

const STATUSES = [
  ['', 'Any status'],
  ['ACTIVE', 'Active'],
  ['AWAITING_RETRY', 'Awaiting retry'],
  ['FAILING', 'Failing'],
  ['RETRY_LIMIT_REACHED', 'Retry limit reached'],
  ['DISABLED', 'Disabled'],
];

/** The Enable/Disable button; calls `onChange(destination)` with the mutation's answer. */
export function toggleButton(d, { canWrite, onChange, onError, small = true }) {
  const verb = d.enabled ? 'Disable' : 'Enable';
  const label = d.displayName || d.name;
  const btn = h('button', {
    type: 'button',
    class: `btn${small ? ' btn-small' : ''}${d.enabled ? ' btn-danger-quiet' : ''}`,
    'aria-label': `${verb} ${label}`,
    'data-action': verb.toLowerCase(),
    disabled: !canWrite,
    title: canWrite ? null : 'Needs the write scope',
  }, verb);
  btn.addEventListener('click', () => whileBusy(btn, d.enabled ? 'Disabling…' : 'Enabling…', async () => {
    try {
      const data = await gql(d.enabled ? TOGGLE.disable : TOGGLE.enable, { id: d.id });
      onChange(data.enableDestination || data.disableDestination);
    } catch (e) {
      onError(e);
    }
  }));
  return btn;
}

export async function destinationsPage(page, { query }) {
  document.title = 'Destinations · Hookline';
  const heading = h('h1', null, 'Destinations');
  const count = h('span', { class: 'count muted' });
  const header = h('div', { class: 'page-head' },
    h('div', null, heading, count),
    page.canWrite() ? h('a', { class: 'btn btn-primary', href: '#/destinations/new' }, 'New destination') : null);

  const nameInput = h('input', { id: 'filter-name', type: 'search', name: 'nameContains', value: query.get('name') || '', autocomplete: 'off' });
  const statusSelect = h('select', { id: 'filter-status', name: 'status' },
    STATUSES.map(([v, l]) => h('option', { value: v, selected: v === (query.get('status') || '') }, l)));
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter destinations' },
    h('div', { class: 'field' }, h('label', { for: 'filter-name' }, 'Name contains'), nameInput),
    h('div', { class: 'field' }, h('label', { for: 'filter-status' }, 'Status'), statusSelect));
  filters.addEventListener('submit', (e) => e.preventDefault());

  const alert = h('div', { role: 'alert', class: 'inline-alert', hidden: true });
  const tbody = h('tbody');
  const table = h('table', { class: 'data destinations' },
    h('caption', { class: 'sr-only' }, 'Destinations with their health over the last 24 hours'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'Destination'),
      h('th', { scope: 'col' }, 'Status'),
      h('th', { scope: 'col', class: 'num' }, h('abbr', { title: 'Success rate of attempts over the last 24 hours' }, 'Success 24 h')),
      h('th', { scope: 'col', class: 'num' }, h('abbr', { title: '95th percentile response time over the last 24 hours' }, 'p95 24 h')),
      h('th', { scope: 'col', class: 'num' }, 'Attempts 24 h'),
      h('th', { scope: 'col', class: 'num' }, 'Pending'),
      h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
    tbody);
  const empty = h('div', { class: 'empty', hidden: true });
  const more = h('button', { type: 'button', class: 'btn', hidden: true }, 'Load more');
  const wrap = h('div', { class: 'table-wrap', 'aria-busy': 'true' }, table);
  page.main.append(header, filters, alert, wrap, empty, h('div', { class: 'actions' }, more));

  const rows = new Map(); // id → { destination, tr }
  let after = null;
  let generation = 0;

  function showError(e) {
    alert.textContent = e.message;
    alert.hidden = false;
  }

  function row(d) {
    const label = d.displayName || d.name;
    const rate = d.stats?.successRate;
    const tr = h('tr', { 'data-id': d.id, 'data-name': d.name },
      h('th', { scope: 'row' },
        h('a', { href: `#/destinations/${encodeURIComponent(d.id)}`, class: 'strong' }, label),
        d.displayName ? h('span', { class: 'mono muted small' }, ` ${d.name}`) : null,
        h('div', { class: 'mono muted small url', title: d.url }, d.url)),
      h('td', null, badge(d.status),
        d.failureDetails?.consecutiveFailures
          ? h('div', { class: 'small muted', title: d.failureDetails.lastFailedReason || '' }, `${d.failureDetails.consecutiveFailures} failing in a row`)
          : null),
      h('td', { class: `num ${rate !== null && rate !== undefined && rate < 0.95 ? 'tone-text-bad' : ''}` }, fmtPercent(rate)),
      h('td', { class: 'num' }, fmtMs(d.stats?.p95ResponseTimeMs)),
      h('td', { class: 'num' }, fmtInt(d.stats?.totalAttempts)),
      h('td', { class: 'num' }, fmtInt(d.stats?.pendingDeliveries)),
      h('td', { class: 'row-actions' }, toggleButton(d, {
        canWrite: page.canWrite(),
        onError: showError,
        onChange: (changed) => {
          const merged = { ...d, ...changed };
          replaceRow(merged);
          page.flash(`${label} ${changed.enabled ? 'enabled' : 'disabled'}.`, 'info');
        },
      })));
    return tr;
  }

  function replaceRow(d) {
    const old = rows.get(d.id);
    const hadFocus = old?.tr.contains(document.activeElement);
    const tr = row(d);
    if (old) old.tr.replaceWith(tr);
    else tbody.append(tr);
    rows.set(d.id, { destination: d, tr });
    if (hadFocus) tr.querySelector('button')?.focus();
  }

  async function load(reset) {
    const gen = ++generation;
    if (reset) after = null;
    wrap.setAttribute('aria-busy', 'true');
    const filter = {};
    if (nameInput.value.trim()) filter.nameContains = nameInput.value.trim();
    if (statusSelect.value) filter.status = statusSelect.value;
    const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
    try {
      const data = await gql(LIST, { first: 50, after, filter, since }, { signal: page.signal });
      if (gen !== generation) return;
      alert.hidden = true;
      const conn = data.destinations;
      if (reset) {
        tbody.replaceChildren();
        rows.clear();
      }
      for (const d of conn.nodes) replaceRow(d);
      after = conn.pageInfo.endCursor;
      more.hidden = !conn.pageInfo.hasNextPage;
      count.textContent = ` ${fmtInt(conn.totalCount)} ${conn.totalCount === 1 ? 'destination' : 'destinations'}`;
      const filtered = Object.keys(filter).length > 0;
      empty.hidden = conn.totalCount !== 0;
      table.hidden = conn.totalCount === 0;
      empty.replaceChildren(filtered
        ? h('p', null, 'No destination matches these filters.')
        : h('p', null, 'No destinations yet. A destination is an HTTP endpoint that receives your events, signed and retried. ',
          page.canWrite() ? h('a', { href: '#/destinations/new' }, 'Create the first one.') : null));
    } catch (e) {
      if (e.name === 'AbortError') return;
      showError(e);
    } finally {
      if (gen === generation) wrap.setAttribute('aria-busy', 'false');
    }
  }

  const reload = debounce(() => {
    const qs = new URLSearchParams();
    if (nameInput.value.trim()) qs.set('name', nameInput.value.trim());
    if (statusSelect.value) qs.set('status', statusSelect.value);
    const hash = `#/destinations${qs.toString() ? `?${qs}` : ''}`;
    history.replaceState(null, '', hash);
    load(true);
  }, 250);
  nameInput.addEventListener('input', reload);
  statusSelect.addEventListener('change', reload);
  more.addEventListener('click', () => load(false));

  // Badges follow status changes as they happen.
  page.onCleanup(live.subscribe(STATUS_CHANGES, {}, {
    next: (data) => {
      const c = data.destinationStatusChanged;
      const r = rows.get(c.destinationId);
      if (r && (r.destination.status !== c.status || r.destination.enabled !== c.enabled)) {
        replaceRow({ ...r.destination, status: c.status, enabled: c.enabled });
      }
    },
  }));

  await load(true);
}
