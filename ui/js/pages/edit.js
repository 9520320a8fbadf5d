// Create and edit a destination. The server validates; its errors (`extensions.field`) are
// shown next to the fields they name. Edits send only what changed, with `expectedVersion`.

import { gql } from '../api.js';
import { h, shortId, whileBusy } from '../dom.js';
import {
  checkbox, clearErrors, errorSummary, field, input, problemsFrom, select, showErrors,
} from '../form.js';

const FIELDS = `id name displayName description url enabled version signingScheme signatureHeader httpAuth
  headers { name } timeoutMs payloadFormat transform batchSize batchWindowMs rateLimitPerSec maxInFlight
  ordered retrySchedule maxAttempts discardAfterSecs lossy tlsVerify`;

const LOAD = `query EditDestination($id: ID!) { destination(id: $id) { ${FIELDS} } }`;
const CREATE = `mutation CreateDestination($input: CreateDestinationInput!) { createDestination(input: $input) { id name } }`;
const PREVIEW = `query PreviewDelivery($id: ID!, $event: PreviewEventInput!) {
  previewDelivery(destinationId: $id, event: $event) { matched reason url headers { name value } body signature } }`;
const UPDATE = `mutation UpdateDestination($id: ID!, $input: UpdateDestinationInput!) { updateDestination(id: $id, input: $input) { id name version } }`;

class ParseError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

function int(form, name, { nullable = false } = {}) {
  const raw = form.elements[name].value.trim();
  if (raw === '') return nullable ? null : undefined;
  if (!/^-?\d+$/.test(raw)) throw new ParseError(name, 'must be a whole number');
  return Number(raw);
}

function text(form, name, { nullable = false, required = false } = {}) {
  const raw = form.elements[name].value.trim();
  if (raw === '' && required) throw new ParseError(name, 'is required');
  if (raw === '') return nullable ? null : undefined;
  return raw;
}

function list(raw) {
  return raw.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
}

/** Reads the form into a GraphQL input; `undefined` means "not set", `null` means "clear". */
function readForm(form, creating) {
  const v = {};
  const problems = [];
  const attempt = (name, fn) => {
    try {
      const value = fn();
      if (value !== undefined) v[name] = value;
    } catch (e) {
      if (!(e instanceof ParseError)) throw e;
      problems.push({ field: e.field, message: e.message });
    }
  };
  const nullable = !creating;
  attempt('name', () => text(form, 'name', { required: true }));
  attempt('displayName', () => text(form, 'displayName', { nullable }));
  attempt('description', () => text(form, 'description', { nullable }));
  attempt('url', () => text(form, 'url', { required: true }));
  if (creating) {
    v.enabled = form.elements.enabled.checked;
    const types = list(form.elements.eventTypes.value);
    if (types.length) {
      v.eventTypes = types;
      v.eventsPolicy = form.elements.eventsPolicy.value;
    }
    if (form.elements.minLevel.value) v.minLevel = form.elements.minLevel.value;
  }
  v.payloadFormat = form.elements.payloadFormat.value;
  attempt('transform', () => text(form, 'transform', { nullable }));
  attempt('timeoutMs', () => int(form, 'timeoutMs'));
  attempt('retrySchedule', () => {
    const raw = form.elements.retrySchedule.value.trim();
    if (!raw) return undefined;
    const parts = list(raw);
    if (!parts.every((p) => /^\d+$/.test(p))) throw new ParseError('retrySchedule', 'list whole seconds, e.g. 5, 30, 120');
    return parts.map(Number);
  });
  attempt('maxAttempts', () => int(form, 'maxAttempts'));
  attempt('discardAfterSecs', () => int(form, 'discardAfterSecs', { nullable }));
  v.ordered = form.elements.ordered.checked;
  v.lossy = form.elements.lossy.checked;
  attempt('batchSize', () => int(form, 'batchSize'));
  attempt('batchWindowMs', () => int(form, 'batchWindowMs'));
  attempt('rateLimitPerSec', () => int(form, 'rateLimitPerSec', { nullable }));
  attempt('maxInFlight', () => int(form, 'maxInFlight'));
  v.signingScheme = form.elements.signingScheme.value;
  attempt('signatureHeader', () => text(form, 'signatureHeader', { nullable }));
  attempt('signingSecret', () => text(form, 'signingSecret'));
  const auth = form.elements.authKind.value;
  if (auth === 'NONE') v.httpAuth = creating ? undefined : null;
  else if (auth === 'BASIC') v.httpAuth = { basic: { username: form.elements.authUser.value, password: form.elements.authPassword.value } };
  else if (auth === 'BEARER') v.httpAuth = { bearer: { token: form.elements.authToken.value } };
  if (v.httpAuth === undefined) delete v.httpAuth;
  attempt('headers', () => {
    // Header values are write-only: when editing, an empty box keeps the stored headers and
    // "remove all" clears them; anything written replaces them all.
    if (!creating && form.elements.clearHeaders.checked) return [];
    const lines = form.elements.headers.value.split('\n').map((l) => l.trim()).filter(Boolean);
    if (!creating && !lines.length) return undefined;
    return lines.map((line, i) => {
      const at = line.indexOf(':');
      if (at <= 0) throw new ParseError('headers', `line ${i + 1}: write "Name: value"`);
      return { name: line.slice(0, at).trim(), value: line.slice(at + 1).trim() };
    });
  });
  v.tlsVerify = form.elements.tlsVerify.checked;
  return { input: v, problems };
}

function group(legend, open, ...fields) {
  return h('details', { class: 'form-group', open },
    h('summary', null, h('span', { class: 'group-title' }, legend)),
    h('div', { class: 'group-body' }, fields));
}

function authFieldset(current, creating) {
  const radios = [];
  const radio = (value, label) => {
    const id = `auth-${value.toLowerCase()}`;
    const r = h('input', { type: 'radio', name: 'authKind', id, value, checked: (creating ? 'NONE' : 'KEEP') === value });
    radios.push(r);
    return h('div', { class: 'field-check' }, r, h('label', { for: id }, label));
  };
  const basic = h('div', { class: 'sub-fields', hidden: true },
    field('Username', input('authUser')),
    field('Password', input('authPassword', { type: 'password', autocomplete: 'new-password' })));
  const bearer = h('div', { class: 'sub-fields', hidden: true },
    field('Bearer token', input('authToken', { type: 'password', autocomplete: 'new-password' })));
  const sync = () => {
    const v = radios.find((r) => r.checked)?.value;
    basic.hidden = v !== 'BASIC';
    bearer.hidden = v !== 'BEARER';
  };
  const fs = h('fieldset', { class: 'field', 'data-field': 'httpAuth', 'aria-describedby': 'auth-hint' },
    h('legend', null, 'HTTP authentication'),
    creating ? null : radio('KEEP', `Keep as is (${current})`),
    radio('NONE', 'None'),
    radio('BASIC', 'Basic (username and password)'),
    radio('BEARER', 'Bearer token'),
    basic, bearer,
    h('p', { class: 'hint', id: 'auth-hint' }, 'Credentials are write-only: the API never shows them again.'),
    h('p', { class: 'field-error', id: 'auth-error', hidden: true }));
  fs.addEventListener('change', sync);
  return fs;
}

export async function editPage(page, { params }) {
  const id = params[0] || null;
  const creating = !id;
  document.title = `${creating ? 'New destination' : 'Edit destination'} · Hookline`;
  const title = h('h1', { id: 'form-title' }, creating ? 'New destination' : 'Edit destination');
  page.main.append(
    h('nav', { 'aria-label': 'Breadcrumb', class: 'crumbs' }, h('ol', null,
      h('li', null, h('a', { href: '#/destinations' }, 'Destinations')),
      creating ? null : h('li', null, h('a', { href: `#/destinations/${encodeURIComponent(id)}` }, shortId(id))),
      h('li', { 'aria-current': 'page' }, creating ? 'New' : 'Edit'))),
    title);

  let current = null;
  if (!creating) {
    current = (await gql(LOAD, { id }, { signal: page.signal })).destination;
    if (!current) {
      page.main.append(h('p', null, 'No destination with this id exists in your tenant.'));
      return;
    }
    title.textContent = `Edit ${current.displayName || current.name}`;
  }
  const c = current || {};

  const form = h('form', { class: 'panel destination-form', novalidate: true, 'aria-labelledby': 'form-title' },
    errorSummary(),
    h('fieldset', { class: 'form-section' },
      h('legend', null, 'Basics'),
      field('Name', input('name', { value: c.name || '', maxlength: 128 }), { required: true, hint: 'Unique in your tenant, 1–128 characters.' }),
      field('Display name', input('displayName', { value: c.displayName || '' })),
      field('Endpoint URL', input('url', { type: 'url', inputmode: 'url', value: c.url || '', placeholder: 'https://example.com/webhooks' }), { required: true, hint: 'http or https; Hookline POSTs every event here.' }),
      field('Description', h('textarea', { name: 'description', rows: 2 }, c.description || '')),
      creating ? field('Enabled', checkbox('enabled', true)) : null),
    creating ? h('fieldset', { class: 'form-section' },
      h('legend', null, 'Events'),
      field('Event types', input('eventTypes', { placeholder: '*' }), { hint: 'Names or patterns, separated by commas: user.created, invoice.*. Empty: every event.' }),
      field('Policy', select('eventsPolicy', [['INCLUDE', 'Only these types'], ['EXCLUDE', 'Every type except these']], 'INCLUDE')),
      field('Minimum level', select('minLevel', [['', 'Any level'], ['DEBUG', 'Debug'], ['INFO', 'Info'], ['WARN', 'Warn'], ['ERROR', 'Error'], ['CRITICAL', 'Critical']], ''))) : null,
    group('Delivery and retries', !creating,
      field('Payload format', select('payloadFormat', [['ENVELOPE', 'Envelope ({id, type, timestamp, level, data})'], ['RAW', 'Raw (the event payload itself)']], c.payloadFormat || 'ENVELOPE')),
      field('Transform (jq)', h('textarea', { name: 'transform', rows: 2, spellcheck: 'false', placeholder: '{text: "Paid: \\(.data.amount)"}' }, c.transform || ''), {
        hint: 'Optional. Its output is the request body (replaces the payload format); it sees {id, type, level, createdAt, data}. Needs batch size 1.',
      }),
      field('Timeout (ms)', input('timeoutMs', { inputmode: 'numeric', value: c.timeoutMs ?? '', placeholder: '10000' }), { hint: '1 000 to 60 000.' }),
      field('Retry schedule (seconds)', input('retrySchedule', { value: c.retrySchedule ? c.retrySchedule.join(', ') : '', placeholder: '5, 30, 120, 600, 1800, 3600, 10800, 21600' }), { hint: 'Wait before each retry, ±20 % jitter.' }),
      field('Max attempts', input('maxAttempts', { inputmode: 'numeric', value: c.maxAttempts ?? '' })),
      field('Discard after (seconds)', input('discardAfterSecs', { inputmode: 'numeric', value: c.discardAfterSecs ?? '' }), { hint: 'Give up on deliveries older than this. Empty: never.' }),
      field('Ordered (strict FIFO)', checkbox('ordered', c.ordered)),
      field('Lossy: drop events instead of queueing while failing', checkbox('lossy', c.lossy))),
    group('Throughput', !creating,
      field('Batch size', input('batchSize', { inputmode: 'numeric', value: c.batchSize ?? '', placeholder: '1' })),
      field('Batch window (ms)', input('batchWindowMs', { inputmode: 'numeric', value: c.batchWindowMs ?? '' })),
      field('Rate limit (requests per second)', input('rateLimitPerSec', { inputmode: 'numeric', value: c.rateLimitPerSec ?? '' }), { hint: 'Empty: no limit.' }),
      field('Max in flight', input('maxInFlight', { inputmode: 'numeric', value: c.maxInFlight ?? '' }))),
    group('Signing and authentication', !creating,
      field('Signing scheme', select('signingScheme', [
        ['STANDARD_WEBHOOKS', 'Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)'],
        ['HMAC_SHA256_HEX', 'HMAC-SHA256, hex (sha256=…)'],
        ['HMAC_SHA256_BASE64', 'HMAC-SHA256, base64'],
      ], c.signingScheme || 'STANDARD_WEBHOOKS')),
      field('Signature header', input('signatureHeader', { value: c.signatureHeader || '', placeholder: 'X-Signature' }), { hint: 'For the HMAC schemes; empty: their default.' }),
      field('Signing secret', input('signingSecret', { type: 'password', autocomplete: 'new-password' }), {
        hint: creating ? 'Empty: one is generated (whsec_… for Standard Webhooks).' : 'Empty: keep the current secret. To rotate with a grace period, use the API’s rotateDestinationSecret.',
      }),
      authFieldset(c.httpAuth || 'NONE', creating),
      field('Extra headers', h('textarea', { name: 'headers', rows: 3, spellcheck: 'false', placeholder: 'X-Api-Key: …' }), {
        hint: creating
          ? 'One "Name: value" per line, at most 20.'
          : `Now: ${(c.headers || []).map((x) => x.name).join(', ') || 'none'}. Values are write-only: empty keeps them; to change any, write every header again ("Name: value" per line, at most 20).`,
      }),
      creating ? null : field('Remove all extra headers', checkbox('clearHeaders', false)),
      field('Verify TLS certificates', checkbox('tlsVerify', c.tlsVerify ?? true))),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'btn btn-primary' }, creating ? 'Create destination' : 'Save changes'),
      h('a', { class: 'btn btn-quiet', href: creating ? '#/destinations' : `#/destinations/${encodeURIComponent(id)}` }, 'Cancel')));
  page.main.append(form);
  if (!creating) page.main.append(previewPanel(id));

  const original = creating ? null : readForm(form, false).input;
  const submit = form.querySelector('button[type="submit"]');

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const { input: values, problems } = readForm(form, creating);
    if (!creating && form.elements.authKind.value === 'KEEP') delete values.httpAuth;
    if (problems.length) {
      showErrors(form, problems);
      return;
    }
    let patch = values;
    if (!creating) {
      patch = {};
      for (const [k, v] of Object.entries(values)) {
        if (JSON.stringify(v) !== JSON.stringify(original[k])) patch[k] = v;
      }
      if (!Object.keys(patch).length) {
        page.flash('No changes to save.', 'info');
        page.navigate(`#/destinations/${encodeURIComponent(id)}`);
        return;
      }
      patch.expectedVersion = current.version;
    }
    await whileBusy(submit, creating ? 'Creating…' : 'Saving…', async () => {
      try {
        const data = creating
          ? await gql(CREATE, { input: patch })
          : await gql(UPDATE, { id, input: patch });
        const saved = data.createDestination || data.updateDestination;
        page.flash(creating ? `Destination ${saved.name} created.` : `Destination ${saved.name} saved.`, 'ok');
        page.navigate(`#/destinations/${encodeURIComponent(saved.id)}`);
      } catch (err) {
        const found = problemsFrom(err).map((p) => {
          if (p.code === 'CONFLICT' && /already exists/.test(p.message)) return { ...p, field: 'name' };
          if (p.code === 'CONFLICT') return { ...p, message: `${p.message} Reload the page to see the latest version.` };
          return p;
        });
        showErrors(form, found);
      }
    });
  });

  form.querySelector('input[name="name"]').focus();
}

/** Asks the server what the saved destination would do with an event, without sending it. */
function previewPanel(id) {
  const type = input('previewType', { value: 'hookline.preview', id: 'preview-type' });
  const payload = h('textarea', { name: 'previewPayload', id: 'preview-payload', rows: 3, spellcheck: 'false' }, '{}');
  const out = h('div', { id: 'preview-result', 'aria-live': 'polite' });
  const button = h('button', { type: 'button', class: 'btn' }, 'Preview');
  button.addEventListener('click', () => whileBusy(button, 'Previewing…', async () => {
    out.replaceChildren();
    let data;
    try {
      data = JSON.parse(payload.value || 'null');
    } catch (e) {
      out.append(h('p', { class: 'field-error' }, `Payload: not JSON (${e.message})`));
      return;
    }
    try {
      const p = (await gql(PREVIEW, { id, event: { type: type.value.trim(), payload: data } })).previewDelivery;
      out.append(
        h('p', null, h('strong', null, p.matched ? 'Would be delivered' : 'Would not be delivered'), `: ${p.reason}`),
        h('pre', null, [`POST ${p.url}`, ...p.headers.map((x) => `${x.name}: ${x.value}`), '', p.body ?? '(no body)'].join('\n')));
    } catch (err) {
      out.append(h('p', { class: 'field-error' }, problemsFrom(err).map((x) => x.message).join(' ')));
    }
  }));
  return h('section', { class: 'panel', 'aria-labelledby': 'preview-title' },
    h('h2', { id: 'preview-title' }, 'Preview a delivery'),
    h('p', { class: 'hint' }, 'Shows whether the saved settings deliver this event, and the exact request (secrets masked). Nothing is sent or stored.'),
    field('Event type', type),
    field('Payload (JSON)', payload),
    h('div', { class: 'actions' }, button),
    out);
}
