// Live: every delivery attempt as it finishes, over the `deliveryAttempts` subscription.
// Filters narrow the subscription on the server; pausing holds new rows back until resumed.

import { gql, live } from '../api.js';
import { badge, clockTime, fmtInt, fmtMs, h, shortId, throttle } from '../dom.js';

const TAIL = `subscription Tail($destinationId: ID, $outcome: AttemptOutcome, $eventType: String) {
  deliveryAttempts(destinationId: $destinationId, outcome: $outcome, eventType: $eventType) {
    id deliveryId destinationId eventId eventType attemptNumber startedAt durationMs
    responseStatus errorKind errorMessage outcome nextAttemptAt
  }
}`;
const NAMES = `query DestinationNames { destinations(first: 100) { nodes { id name displayName } } }`;

const MAX_ROWS = 500;

const STATE_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  connected: 'Live',
  reconnecting: 'Connection lost, reconnecting',
  refused: 'Connection refused',
};

export async function livePage(page, { query }) {
  document.title = 'Live · Hookline';
  const names = new Map();
  const filters = {
    destinationId: query.get('destination') || '',
    outcome: query.get('outcome') || '',
    eventType: query.get('eventType') || '',
  };
  let paused = false;
  let held = [];
  let received = 0;
  let unsubscribe = null;

  const connDot = h('span', { class: 'dot', 'aria-hidden': 'true' });
  const connText = h('span', null, STATE_TEXT.idle);
  const conn = h('p', { class: 'conn', id: 'live-connection', role: 'status', 'data-state': 'idle' }, connDot, connText);
  const counter = h('p', { class: 'muted small', id: 'live-count' }, 'Waiting for attempts…');

  const destSelect = h('select', { id: 'live-destination' }, h('option', { value: '' }, 'All destinations'));
  const outcomeSelect = h('select', { id: 'live-outcome' },
    [['', 'Any outcome'], ['SUCCESS', 'Success'], ['FAILURE', 'Failure']].map(([v, l]) => h('option', { value: v, selected: v === filters.outcome }, l)));
  const typeInput = h('input', { id: 'live-event-type', type: 'text', value: filters.eventType, autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. user.created', 'aria-describedby': 'live-type-hint' });
  const pauseBtn = h('button', { type: 'button', class: 'btn', id: 'live-pause', 'aria-pressed': 'false' }, 'Pause');
  const clearBtn = h('button', { type: 'button', class: 'btn btn-quiet', id: 'live-clear' }, 'Clear');

  const filterForm = h('form', { class: 'filters', 'aria-label': 'Filter the live tail' },
    h('div', { class: 'field' }, h('label', { for: 'live-destination' }, 'Destination'), destSelect),
    h('div', { class: 'field' }, h('label', { for: 'live-outcome' }, 'Outcome'), outcomeSelect),
    h('div', { class: 'field' }, h('label', { for: 'live-event-type' }, 'Event type'), typeInput,
      h('p', { class: 'hint', id: 'live-type-hint' }, 'Exact name; press Enter to apply.')),
    h('div', { class: 'buttons' }, pauseBtn, clearBtn));

  const tbody = h('tbody', { id: 'live-rows' });
  const table = h('table', { class: 'data live', id: 'live-table' },
    h('caption', { class: 'sr-only' }, 'Delivery attempts, newest first'),
    h('thead', null, h('tr', null,
      ['Time', 'Destination', 'Event type', 'Attempt', 'Outcome', 'Status code', 'Error', 'Duration'].map((x) =>
        h('th', { scope: 'col', class: x === 'Duration' || x === 'Attempt' ? 'num' : null }, x)))),
    tbody);
  const empty = h('p', { class: 'empty' }, 'Nothing yet. Attempts appear here the moment they finish; publish an event or send a test event to see one.');

  page.main.append(
    h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Live attempts'), counter), conn),
    filterForm,
    empty,
    h('div', { class: 'table-wrap' }, table));

  page.onCleanup(live.onState((s, detail) => {
    conn.dataset.state = s;
    connText.textContent = detail ? `${STATE_TEXT[s] || s}: ${detail}` : STATE_TEXT[s] || s;
  }));

  const updateCounter = throttle(() => {
    const shown = tbody.rows.length;
    counter.textContent = `${fmtInt(received)} received${paused ? `, ${fmtInt(held.length)} held while paused` : ''}; showing ${fmtInt(shown)}.`;
  }, 500);

  function nameOf(id) {
    const n = names.get(id);
    return n ? n.displayName || n.name : shortId(id);
  }

  function row(a) {
    return h('tr', { 'data-outcome': a.outcome, 'data-destination': a.destinationId, class: 'fresh' },
      h('td', null, clockTime(a.startedAt)),
      h('td', null, h('a', { href: `#/destinations/${encodeURIComponent(a.destinationId)}` }, nameOf(a.destinationId))),
      h('td', { class: 'mono' }, a.eventType),
      h('td', { class: 'num' }, a.attemptNumber),
      h('td', null, badge(a.outcome)),
      h('td', { class: 'mono' }, a.responseStatus ?? '—'),
      h('td', null, a.errorKind ? h('span', { class: 'mono', title: a.errorMessage || '' }, a.errorKind) : '—'),
      h('td', { class: 'num' }, fmtMs(a.durationMs)));
  }

  function show(attempts) {
    if (!attempts.length) return;
    const frag = document.createDocumentFragment();
    for (let i = attempts.length - 1; i >= 0; i -= 1) frag.append(row(attempts[i]));
    tbody.prepend(frag);
    while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
    empty.hidden = true;
    updateCounter();
  }

  function subscribe() {
    unsubscribe?.();
    const vars = {
      destinationId: filters.destinationId || null,
      outcome: filters.outcome || null,
      eventType: filters.eventType || null,
    };
    unsubscribe = live.subscribe(TAIL, vars, {
      next: (data) => {
        received += 1;
        const a = data.deliveryAttempts;
        if (paused) {
          held.push(a);
          if (held.length > MAX_ROWS) held.shift();
          pauseBtn.textContent = `Resume (${fmtInt(held.length)} new)`;
          updateCounter();
        } else {
          show([a]);
        }
      },
      error: (errors) => {
        connText.textContent = `Subscription ended: ${errors.map((e) => e.message).join('; ')}`;
      },
    });
  }
  page.onCleanup(() => unsubscribe?.());

  function applyFilters() {
    filters.destinationId = destSelect.value;
    filters.outcome = outcomeSelect.value;
    filters.eventType = typeInput.value.trim();
    const qs = new URLSearchParams();
    if (filters.destinationId) qs.set('destination', filters.destinationId);
    if (filters.outcome) qs.set('outcome', filters.outcome);
    if (filters.eventType) qs.set('eventType', filters.eventType);
    history.replaceState(null, '', `#/live${qs.toString() ? `?${qs}` : ''}`);
    // Rows already shown that the new filters exclude go away; new ones come filtered.
    for (const tr of [...tbody.rows]) {
      const keep = (!filters.destinationId || tr.dataset.destination === filters.destinationId)
        && (!filters.outcome || tr.dataset.outcome === filters.outcome)
        && (!filters.eventType || tr.cells[2].textContent === filters.eventType);
      if (!keep) tr.remove();
    }
    held = [];
    subscribe();
    updateCounter();
  }

  destSelect.addEventListener('change', applyFilters);
  outcomeSelect.addEventListener('change', applyFilters);
  typeInput.addEventListener('change', applyFilters);
  filterForm.addEventListener('submit', (e) => {
    e.preventDefault();
    applyFilters();
  });
  pauseBtn.addEventListener('click', () => {
    paused = !paused;
    pauseBtn.setAttribute('aria-pressed', String(paused));
    if (paused) {
      pauseBtn.textContent = 'Resume';
    } else {
      pauseBtn.textContent = 'Pause';
      show(held);
      held = [];
    }
    updateCounter();
  });
  clearBtn.addEventListener('click', () => {
    tbody.replaceChildren();
    held = [];
    if (paused) pauseBtn.textContent = 'Resume';
    empty.hidden = false;
    updateCounter();
  });

  // Subscribe first so nothing is missed while the names load.
  subscribe();
  try {
    const data = await gql(NAMES, {}, { signal: page.signal });
    for (const d of data.destinations.nodes) {
      names.set(d.id, d);
      destSelect.append(h('option', { value: d.id, selected: d.id === filters.destinationId }, d.displayName || d.name));
    }
    if (filters.destinationId && !names.has(filters.destinationId)) {
      destSelect.append(h('option', { value: filters.destinationId, selected: true }, shortId(filters.destinationId)));
    }
    // Rows that arrived before the names were known.
    for (const a of tbody.querySelectorAll('tr')) {
      const link = a.cells[1].querySelector('a');
      link.textContent = nameOf(a.dataset.destination);
    }
  } catch (e) {
    if (e.name !== 'AbortError') counter.textContent = `Could not load destination names: ${e.message}`;
  }
}
