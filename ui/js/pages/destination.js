// One destination: health, charts, recent deliveries with their attempts, actions, settings.
// Refreshes itself when its attempts or status changes arrive over the live connection.

import { gql, live } from '../api.js';
import { attemptsChart, fillBuckets, latencyChart } from '../chart.js';
import {
  absoluteTime, badge, defList, fmtInt, fmtMs, fmtPercent, fmtSeconds, h, shortId, throttle, time, whileBusy,
} from '../dom.js';
import { toggleButton } from './destinations.js';

const DETAIL = `query Destination($id: ID!, $since: DateTime!, $statsSince: DateTime!, $bucket: MetricsBucket!, $first: Int!, $status: [DeliveryStatus!]) {
  destination(id: $id) {
    id name displayName description url enabled status version
    signingScheme signatureHeader previousSecretExpiresAt httpAuth headers { name }
    timeoutMs payloadFormat batchSize batchWindowMs rateLimitPerSec maxInFlight ordered
    retrySchedule maxAttempts discardAfterSecs lossy tlsVerify
    createdAt updatedAt updatedBy
    failureDetails { consecutiveFailures lastSuccessfulAt lastFailedAt lastFailedStatusCode lastFailedReason nextAttemptAt }
    eventSubscriptions { id eventTypes eventsPolicy minLevel enabled payloadFilter }
    stats(since: $statsSince) {
      totalAttempts successfulAttempts failedAttempts successRate
      averageResponseTimeMs p50ResponseTimeMs p95ResponseTimeMs pendingDeliveries lastSuccessAt lastFailureAt
    }
    deliveries(first: $first, status: $status) {
      totalCount
      nodes {
        id status eventId eventType attemptCount nextAttemptAt lastStatusCode lastError createdAt completedAt
        attempts { id attemptNumber startedAt durationMs responseStatus responseBody errorKind errorMessage outcome nextAttemptAt }
      }
    }
  }
  deliveryMetrics(destinationId: $id, since: $since, bucket: $bucket) {
    start attempts successes failures p50LatencyMs p95LatencyMs
  }
}`;

const SECRET = `query Secret($id: ID!) { destination(id: $id) { id signingSecret } }`;
const TEST = `mutation SendTest($id: ID!) {
  sendTestEvent(destinationId: $id) { id outcome responseStatus durationMs errorKind errorMessage }
}`;
const RETRY = `mutation Retry($id: ID!) { retryDelivery(id: $id) { id status } }`;
const REPLAY = `mutation Replay($id: ID!, $since: DateTime!, $until: DateTime, $statuses: [DeliveryStatus!]) {
  replayDeliveries(destinationId: $id, since: $since, until: $until, statuses: $statuses)
}`;
const DELETE = `mutation Delete($id: ID!) { deleteDestination(id: $id) }`;
const ATTEMPTS = `subscription DestinationAttempts($id: ID!) { deliveryAttempts(destinationId: $id) { id } }`;
const STATUS = `subscription DestinationStatus($id: ID!) { destinationStatusChanged(destinationId: $id) { status enabled } }`;

const RANGES = [
  ['1h', 'Last hour', 3600e3, 'MINUTE', 60e3, 'minute'],
  ['3h', 'Last 3 hours', 3 * 3600e3, 'MINUTE', 60e3, 'minute'],
  ['6h', 'Last 6 hours', 6 * 3600e3, 'MINUTE', 60e3, 'minute'],
  ['24h', 'Last 24 hours', 24 * 3600e3, 'HOUR', 3600e3, 'hour'],
];

const DELIVERY_FILTERS = [
  ['', 'All deliveries'],
  ['FAILED', 'Failed'],
  ['AWAITING_RETRY', 'Awaiting retry'],
  ['PENDING', 'Pending'],
  ['SUCCEEDED', 'Succeeded'],
  ['DISCARDED', 'Discarded'],
];

function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function excerpt(text, n = 160) {
  if (!text) return null;
  const one = text.replace(/\s+/g, ' ').trim();
  return one.length > n ? `${one.slice(0, n)}…` : one;
}

function attemptsTable(attempts) {
  if (!attempts.length) return h('p', { class: 'muted' }, 'No attempt yet.');
  return h('table', { class: 'data attempts' },
    h('thead', null, h('tr', null,
      ['#', 'Started', 'Outcome', 'Status code', 'Error', 'Duration', 'Response'].map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', null, attempts.map((a) => h('tr', { 'data-attempt': a.id },
      h('td', null, a.attemptNumber),
      h('td', null, time(a.startedAt)),
      h('td', null, badge(a.outcome)),
      h('td', { class: 'mono' }, a.responseStatus ?? '—'),
      h('td', null, a.errorKind ? h('span', { class: 'mono' }, a.errorKind) : '—',
        a.errorMessage ? h('div', { class: 'small muted' }, a.errorMessage) : null),
      h('td', { class: 'num' }, fmtMs(a.durationMs)),
      h('td', { class: 'response' }, a.responseBody
        ? h('details', null, h('summary', { class: 'mono small' }, excerpt(a.responseBody, 60)), h('pre', null, a.responseBody))
        : h('span', { class: 'muted' }, '—'))))));
}

export async function destinationPage(page, { params, query }) {
  const id = params[0];
  const state = {
    range: RANGES.find((r) => r[0] === query.get('range')) || RANGES[0],
    deliveryStatus: query.get('deliveries') || '',
    open: new Set(), // delivery ids whose attempts are expanded
    data: null,
  };

  const title = h('h1', null, 'Destination');
  const crumbs = h('nav', { 'aria-label': 'Breadcrumb', class: 'crumbs' },
    h('ol', null, h('li', null, h('a', { href: '#/destinations' }, 'Destinations')), h('li', { 'aria-current': 'page' }, shortId(id))));
  const statusNote = h('div', { class: 'action-result', role: 'status', 'aria-live': 'polite' });
  const head = h('div', { class: 'page-head' }, h('div', null, title));
  const actions = h('div', { class: 'toolbar', role: 'group', 'aria-label': 'Destination actions' });
  const body = h('div', { class: 'detail', 'aria-busy': 'true' });
  page.main.append(crumbs, head, actions, statusNote, body);

  const note = (text, tone = 'info') => statusNote.replaceChildren(h('p', { class: `note tone-${tone}` }, text));

  // ---- sections (built once, filled on every refresh) ----------------------------------------
  const statsBox = h('div', { class: 'stat-cards' });
  const rangeSelect = h('select', { id: 'chart-range' }, RANGES.map(([v, l]) => h('option', { value: v, selected: v === state.range[0] }, l)));
  const chartsBox = h('div', { class: 'charts' });
  const failureBox = h('div');
  const deliveriesFilter = h('select', { id: 'deliveries-filter' },
    DELIVERY_FILTERS.map(([v, l]) => h('option', { value: v, selected: v === state.deliveryStatus }, l)));
  const deliveriesBox = h('div', { class: 'deliveries' });
  const settingsBox = h('div');
  const replayBox = h('div');

  body.append(
    h('section', { 'aria-labelledby': 'sec-health' },
      h('h2', { id: 'sec-health' }, 'Last 24 hours'), statsBox),
    h('section', { 'aria-labelledby': 'sec-charts' },
      h('div', { class: 'section-head' },
        h('h2', { id: 'sec-charts' }, 'Attempts and latency'),
        h('div', { class: 'field inline' }, h('label', { for: 'chart-range' }, 'Window'), rangeSelect)),
      chartsBox),
    h('section', { 'aria-labelledby': 'sec-failures' }, h('h2', { id: 'sec-failures' }, 'Failure details'), failureBox),
    h('section', { 'aria-labelledby': 'sec-deliveries' },
      h('div', { class: 'section-head' },
        h('h2', { id: 'sec-deliveries' }, 'Recent deliveries'),
        h('div', { class: 'field inline' }, h('label', { for: 'deliveries-filter' }, 'Show'), deliveriesFilter)),
      deliveriesBox),
    h('section', { 'aria-labelledby': 'sec-replay' }, h('h2', { id: 'sec-replay' }, 'Replay'), replayBox),
    h('section', { 'aria-labelledby': 'sec-settings' }, h('h2', { id: 'sec-settings' }, 'Settings'), settingsBox));

  function renderHead(d) {
    const label = d.displayName || d.name;
    document.title = `${label} · Hookline`;
    title.replaceChildren(label, ' ', badge(d.status, { id: 'destination-status' }));
    crumbs.querySelector('[aria-current]').textContent = label;
    head.replaceChildren(h('div', null, title,
      h('p', { class: 'mono muted url' }, d.url),
      d.description ? h('p', null, d.description) : null));
    const focusedAction = actions.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    const testBtn = h('button', { type: 'button', class: 'btn', 'data-action': 'test', disabled: !page.canWrite() }, 'Send test event');
    testBtn.addEventListener('click', () => whileBusy(testBtn, 'Sending…', async () => {
      note('Sending a test event…');
      try {
        const a = (await gql(TEST, { id })).sendTestEvent;
        const detail = a.outcome === 'SUCCESS'
          ? `Test event delivered: HTTP ${a.responseStatus} in ${fmtMs(a.durationMs)}.`
          : `Test event failed: ${a.errorKind || ''} ${a.responseStatus ? `HTTP ${a.responseStatus}` : ''} ${a.errorMessage || ''} (${fmtMs(a.durationMs)}).`;
        note(detail.replace(/\s+/g, ' '), a.outcome === 'SUCCESS' ? 'ok' : 'bad');
        refresh();
      } catch (e) {
        note(e.message, 'bad');
      }
    }));
    const toggle = toggleButton(d, {
      small: false,
      canWrite: page.canWrite(),
      onError: (e) => note(e.message, 'bad'),
      onChange: (changed) => {
        note(`${label} ${changed.enabled ? 'enabled' : 'disabled'}.`, 'info');
        state.data = { ...state.data, ...changed };
        renderHead(state.data);
        actions.querySelector('[data-action="enable"], [data-action="disable"]')?.focus();
        refresh();
      },
    });
    const del = h('button', { type: 'button', class: 'btn btn-danger-quiet', 'data-action': 'delete', disabled: !page.canWrite() }, 'Delete');
    del.addEventListener('click', async () => {
      // eslint-disable-next-line no-alert
      if (!window.confirm(`Delete ${label}? Its pending deliveries are discarded.`)) return;
      try {
        await gql(DELETE, { id });
        page.flash(`${label} deleted.`, 'info');
        page.navigate('#/destinations');
      } catch (e) {
        note(e.message, 'bad');
      }
    });
    actions.replaceChildren(
      testBtn,
      toggle,
      page.canWrite() ? h('a', { class: 'btn', href: `#/destinations/${encodeURIComponent(id)}/edit`, 'data-action': 'edit' }, 'Edit') : null,
      h('a', { class: 'btn', href: `#/live?destination=${encodeURIComponent(id)}`, 'data-action': 'live' }, 'Live tail'),
      del);
    if (focusedAction) actions.querySelector(`[data-action="${focusedAction}"]`)?.focus();
  }

  function renderStats(s) {
    const card = (label, value, sub) => h('div', { class: 'stat' },
      h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value' }, value), sub ? h('div', { class: 'stat-sub muted' }, sub) : null);
    statsBox.replaceChildren(
      card('Success rate', fmtPercent(s.successRate), `${fmtInt(s.successfulAttempts)} of ${fmtInt(s.totalAttempts)} attempts`),
      card('Failed attempts', fmtInt(s.failedAttempts), s.lastFailureAt ? ['last ', time(s.lastFailureAt)] : 'none'),
      card('Latency p50 / p95', `${fmtMs(s.p50ResponseTimeMs)} / ${fmtMs(s.p95ResponseTimeMs)}`, `average ${fmtMs(s.averageResponseTimeMs)}`),
      card('Pending deliveries', fmtInt(s.pendingDeliveries), s.lastSuccessAt ? ['last success ', time(s.lastSuccessAt)] : 'no success yet'));
  }

  function renderCharts(points, since, until) {
    const [, , , , bucketMs, unit] = state.range;
    const buckets = fillBuckets(points, since, until, bucketMs);
    chartsBox.replaceChildren(
      h('div', { class: 'chart-box' }, h('h3', null, `Attempts per ${unit}`), attemptsChart(buckets, { bucketMs, unit })),
      h('div', { class: 'chart-box' }, h('h3', null, 'Response time'), latencyChart(buckets, { bucketMs, unit })));
  }

  function renderFailures(f, d) {
    if (!f.consecutiveFailures && !f.lastFailedAt) {
      failureBox.replaceChildren(h('p', { class: 'muted' }, 'No failure recorded.',
        f.lastSuccessfulAt ? [' Last success ', time(f.lastSuccessfulAt), '.'] : null));
      return;
    }
    failureBox.replaceChildren(defList([
      ['Consecutive failures', fmtInt(f.consecutiveFailures)],
      ['Last failure', f.lastFailedAt ? time(f.lastFailedAt) : null],
      ['Last failed status code', f.lastFailedStatusCode],
      ['Last failure reason', f.lastFailedReason ? h('span', { class: 'mono' }, f.lastFailedReason) : null],
      ['Last success', f.lastSuccessfulAt ? time(f.lastSuccessfulAt) : null],
      ['Next attempt', f.nextAttemptAt ? time(f.nextAttemptAt) : null],
      ['Health', badge(d.status)],
    ]));
  }

  function renderDeliveries(conn) {
    const focusKey = deliveriesBox.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    if (!conn.nodes.length) {
      deliveriesBox.replaceChildren(h('p', { class: 'muted' }, state.deliveryStatus ? 'No delivery with this status.' : 'No deliveries yet. Publish an event or send a test event.'));
      return;
    }
    const list = h('ul', { class: 'delivery-list' }, conn.nodes.map((dl) => {
      const retry = h('button', {
        type: 'button',
        class: 'btn btn-small',
        'data-key': `retry-${dl.id}`,
        disabled: !page.canWrite() || dl.status === 'DELIVERING',
        'aria-label': `Retry delivery of ${dl.eventType} (${shortId(dl.id)})`,
      }, 'Retry');
      retry.addEventListener('click', () => whileBusy(retry, null, async () => {
        try {
          await gql(RETRY, { id: dl.id });
          note(`Delivery ${shortId(dl.id)} queued for another attempt.`, 'info');
          refresh();
        } catch (e) {
          note(e.message, 'bad');
        }
      }));
      const details = h('details', { 'data-delivery': dl.id, open: state.open.has(dl.id) },
        h('summary', { 'data-key': `summary-${dl.id}` },
          h('span', { class: 'mono strong' }, dl.eventType),
          ' ', badge(dl.status),
          h('span', { class: 'muted small' }, ` ${dl.attemptCount} ${dl.attemptCount === 1 ? 'attempt' : 'attempts'}`,
            dl.lastStatusCode ? ` · HTTP ${dl.lastStatusCode}` : '',
            ' · created '), time(dl.createdAt),
          dl.nextAttemptAt && !dl.completedAt ? h('span', { class: 'muted small' }, ' · next ', time(dl.nextAttemptAt)) : null),
        h('div', { class: 'delivery-body' },
          defList([
            ['Delivery', h('span', { class: 'mono' }, dl.id)],
            ['Event', h('span', { class: 'mono' }, dl.eventId)],
            ['Completed', dl.completedAt ? absoluteTime(dl.completedAt) : null],
            ['Last error', dl.lastError],
          ], 'props compact'),
          attemptsTable(dl.attempts)));
      details.addEventListener('toggle', () => {
        if (details.open) state.open.add(dl.id);
        else state.open.delete(dl.id);
      });
      return h('li', null, details, h('div', { class: 'delivery-actions' }, retry));
    }));
    deliveriesBox.replaceChildren(
      h('p', { class: 'muted small' }, `Showing ${conn.nodes.length} of ${fmtInt(conn.totalCount)}, newest first. Expand one to see its attempts.`),
      list);
    if (focusKey) deliveriesBox.querySelector(`[data-key="${CSS.escape(focusKey)}"]`)?.focus();
  }

  function renderSettings(d) {
    const subs = d.eventSubscriptions;
    const secretBox = h('span', null);
    const reveal = h('button', { type: 'button', class: 'btn btn-small', disabled: !page.canWrite() }, 'Reveal');
    reveal.addEventListener('click', async () => {
      try {
        state.secret = (await gql(SECRET, { id })).destination.signingSecret;
        secretBox.replaceChildren(h('code', { class: 'secret' }, state.secret));
      } catch (e) {
        note(e.message, 'bad');
      }
    });
    if (state.secret) secretBox.append(h('code', { class: 'secret' }, state.secret));
    else secretBox.append(h('span', { class: 'muted' }, '•••••••• '), reveal);
    settingsBox.replaceChildren(defList([
      ['Name', h('span', { class: 'mono' }, d.name)],
      ['Display name', d.displayName],
      ['URL', h('span', { class: 'mono' }, d.url)],
      ['Enabled', d.enabled ? 'Yes' : 'No'],
      ['Events', subs.length ? h('ul', { class: 'plain' }, subs.map((s) => h('li', null,
        `${s.eventsPolicy === 'EXCLUDE' ? 'All except ' : ''}${s.eventTypes.join(', ')}`,
        h('span', { class: 'muted' }, ` · level ≥ ${s.minLevel}${s.enabled ? '' : ' · paused'}${s.payloadFilter ? ' · payload filter' : ''}`)))) : 'None (receives nothing)'],
      ['Payload format', d.payloadFormat],
      ['Signing', `${d.signingScheme}${d.signatureHeader ? ` (header ${d.signatureHeader})` : ''}`],
      ['Signing secret', secretBox],
      ['Previous secret valid until', d.previousSecretExpiresAt ? absoluteTime(d.previousSecretExpiresAt) : null],
      ['HTTP authentication', d.httpAuth],
      ['Extra headers', d.headers.length ? d.headers.map((x) => x.name).join(', ') : null],
      ['Timeout', fmtMs(d.timeoutMs)],
      ['Retry schedule', d.retrySchedule.map(fmtSeconds).join(', ')],
      ['Max attempts', d.maxAttempts],
      ['Discard after', d.discardAfterSecs ? fmtSeconds(d.discardAfterSecs) : null],
      ['Batching', d.batchSize > 1 ? `${d.batchSize} events / ${fmtMs(d.batchWindowMs)}` : 'Off'],
      ['Rate limit', d.rateLimitPerSec ? `${d.rateLimitPerSec} / s` : 'None'],
      ['Max in flight', d.maxInFlight],
      ['Ordered (FIFO)', d.ordered ? 'Yes' : 'No'],
      ['Lossy while failing', d.lossy ? 'Yes' : 'No'],
      ['TLS verification', d.tlsVerify ? 'On' : 'Off'],
      ['Version', d.version],
      ['Created', absoluteTime(d.createdAt)],
      ['Updated', [absoluteTime(d.updatedAt), ` by ${d.updatedBy}`]],
      ['ID', h('span', { class: 'mono' }, d.id)],
    ]));
  }

  function renderReplay() {
    const since = h('input', { id: 'replay-since', type: 'datetime-local', required: true, value: toLocalInput(new Date(Date.now() - 24 * 3600e3)) });
    const until = h('input', { id: 'replay-until', type: 'datetime-local' });
    const boxes = ['FAILED', 'DISCARDED', 'SUCCEEDED'].map((s) => {
      const cb = h('input', { type: 'checkbox', id: `replay-${s}`, value: s, checked: s !== 'SUCCEEDED' });
      return h('div', { class: 'field-check' }, cb, h('label', { for: `replay-${s}` }, s.charAt(0) + s.slice(1).toLowerCase()));
    });
    const submit = h('button', { type: 'submit', class: 'btn', disabled: !page.canWrite() }, 'Replay deliveries');
    const form = h('form', { class: 'replay', 'aria-describedby': 'replay-hint' },
      h('p', { id: 'replay-hint', class: 'hint' }, 'Queues again the finished deliveries created in this window, e.g. after fixing the receiver.'),
      h('div', { class: 'row' },
        h('div', { class: 'field' }, h('label', { for: 'replay-since' }, 'From'), since),
        h('div', { class: 'field' }, h('label', { for: 'replay-until' }, 'Until (optional)'), until),
        h('fieldset', { class: 'checks' }, h('legend', null, 'With status'), boxes)),
      h('div', { class: 'actions' }, submit));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const statuses = boxes.map((b) => b.querySelector('input')).filter((c) => c.checked).map((c) => c.value);
      if (!since.value || !statuses.length) {
        note('Choose a start time and at least one status.', 'bad');
        return;
      }
      await whileBusy(submit, 'Replaying…', async () => {
        try {
          const n = (await gql(REPLAY, {
            id,
            since: new Date(since.value).toISOString(),
            until: until.value ? new Date(until.value).toISOString() : null,
            statuses,
          })).replayDeliveries;
          note(n === 0 ? 'Nothing to replay in this window.' : `${fmtInt(n)} ${n === 1 ? 'delivery' : 'deliveries'} queued again.`, n ? 'ok' : 'info');
          refresh();
        } catch (err) {
          note(err.message, 'bad');
        }
      });
    });
    replayBox.replaceChildren(form);
  }

  async function load() {
    const [, , spanMs, bucket] = state.range;
    const until = Date.now();
    const since = until - spanMs;
    body.setAttribute('aria-busy', 'true');
    const data = await gql(DETAIL, {
      id,
      since: new Date(since).toISOString(),
      statsSince: new Date(until - 24 * 3600e3).toISOString(),
      bucket,
      first: 25,
      status: state.deliveryStatus ? [state.deliveryStatus] : null,
    }, { signal: page.signal });
    body.setAttribute('aria-busy', 'false');
    const d = data.destination;
    if (!d) {
      title.textContent = 'Destination not found';
      actions.replaceChildren();
      body.replaceChildren(h('p', null, 'No destination with this id exists in your tenant. ', h('a', { href: '#/destinations' }, 'Back to the list.')));
      return false;
    }
    const first = !state.data;
    state.data = d;
    renderHead(d);
    renderStats(d.stats);
    renderCharts(data.deliveryMetrics, since, until);
    renderFailures(d.failureDetails, d);
    renderDeliveries(d.deliveries);
    renderSettings(d);
    if (first) renderReplay();
    return true;
  }

  // Coalesces bursts of live events into at most one reload a second.
  const refresh = throttle(() => {
    if (!page.isCurrent()) return;
    load().catch((e) => {
      if (e.name !== 'AbortError') note(e.message, 'bad');
    });
  }, 1000);

  rangeSelect.addEventListener('change', () => {
    state.range = RANGES.find((r) => r[0] === rangeSelect.value);
    refresh();
  });
  deliveriesFilter.addEventListener('change', () => {
    state.deliveryStatus = deliveriesFilter.value;
    refresh();
  });

  const found = await load();
  if (!found) return;
  page.onCleanup(live.subscribe(ATTEMPTS, { id }, { next: refresh }));
  page.onCleanup(live.subscribe(STATUS, { id }, { next: refresh }));
  // Relative times and the chart window move on even when nothing happens.
  const timer = setInterval(refresh, 30000);
  page.onCleanup(() => clearInterval(timer));
}
