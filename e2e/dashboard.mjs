// End-to-end test of the Hookline dashboard and GraphiQL page in Debian's Chromium.
//
//   node e2e/dashboard.mjs <server-url> <token> <receiver-url>
//
// Run by tests/browser.rs (`cargo test --test browser`) against a real server and a real
// receiver. Screenshots go to $SCREENSHOT_DIR (default ../target/e2e-screenshots). Exits
// non-zero on the first failed expectation, after saving failure.png there.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const [base, token, receiverUrl] = process.argv.slice(2);
if (!base || !token || !receiverUrl) {
  console.error('usage: node dashboard.mjs <server-url> <token> <receiver-url>');
  process.exit(2);
}
const shots = resolve(process.env.SCREENSHOT_DIR || new URL('../target/e2e-screenshots', import.meta.url).pathname);
mkdirSync(shots, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 20000;

// Exactly these flags (the machine has no internet: without the background-networking ones
// Chromium keeps trying to reach Google), plus a fresh profile directory.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const started = Date.now();
function log(msg) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${msg}`);
}

function check(cond, msg) {
  if (!cond) throw new Error(`expectation failed: ${msg}`);
}

async function gql(query, variables = {}) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

const PUBLISH = `mutation Publish($input: PublishEventInput!) { publishEvent(input: $input) { id type } }`;
const CREATE = `mutation Create($input: CreateDestinationInput!) { createDestination(input: $input) { id name } }`;

async function publish(type, payload) {
  return (await gql(PUBLISH, { input: { type, payload } })).publishEvent;
}

/** Automated accessibility checks on our own pages: labels, names, contrast, one h1. */
async function a11y(page, where) {
  const problems = await page.evaluate(() => {
    const out = [];
    const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
    for (const el of document.querySelectorAll('input, select, textarea')) {
      if (el.type === 'hidden' || !visible(el)) continue;
      const named = el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
      if (!named) out.push(`unlabelled ${el.tagName.toLowerCase()} name=${el.name || el.id}`);
    }
    for (const el of document.querySelectorAll('button, a[href]')) {
      if (!visible(el)) continue;
      if (!(el.textContent.trim() || el.getAttribute('aria-label') || el.querySelector('img[alt]:not([alt=""])'))) {
        out.push(`${el.tagName.toLowerCase()} without an accessible name: ${el.outerHTML.slice(0, 80)}`);
      }
    }
    for (const img of document.querySelectorAll('img')) if (!img.hasAttribute('alt')) out.push('img without alt');
    if (document.querySelectorAll('h1').length !== 1) out.push(`${document.querySelectorAll('h1').length} h1 elements`);
    if (!document.documentElement.lang) out.push('no lang on <html>');

    // WCAG contrast of text that carries meaning: badges, buttons, muted text, links, errors.
    const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (c) => {
        const v = c / 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const sel = '.badge, .btn:not(:disabled), .muted, a[href], .field-error, .hint, th, .stat-label, .conn, .axis';
    for (const el of document.querySelectorAll(sel)) {
      if (!visible(el) || !el.textContent.trim()) continue;
      const style = getComputedStyle(el);
      const fg = rgb(el instanceof SVGElement ? style.fill : style.color).slice(0, 3);
      const bg = background(el instanceof SVGElement ? el.closest('section, main, body') : el);
      const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
      const ratio = (a + 0.05) / (b + 0.05);
      if (ratio < 4.5) out.push(`contrast ${ratio.toFixed(2)} < 4.5 for ${el.className || el.tagName} "${el.textContent.trim().slice(0, 30)}"`);
    }
    return out;
  });
  check(problems.length === 0, `accessibility on ${where}:\n  ${problems.join('\n  ')}`);
}

async function shot(page, name, opts = {}) {
  await page.screenshot({ path: join(shots, `${name}.png`), ...opts });
  log(`screenshot ${name}.png`);
}

const userDataDir = mkdtempSync(join(tmpdir(), 'hookline-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: ARGS,
  viewport: { width: 1280, height: 860 },
  deviceScaleFactor: 1,
  colorScheme: 'light',
  reducedMotion: 'reduce',
  locale: 'en-GB',
  timezoneId: 'UTC',
});
context.setDefaultTimeout(TIMEOUT);

// Air-gap guard: the pages may load nothing but the server itself.
const serverHost = new URL(base).host;
const offsite = [];
const failures = [];
const requested = [];
await context.route('**/*', (route) => {
  const url = new URL(route.request().url());
  if (url.host === serverHost || url.protocol === 'data:' || url.protocol === 'blob:') return route.continue();
  offsite.push(url.toString());
  return route.abort();
});

const page = context.pages()[0] || (await context.newPage());
page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error') failures.push(`console error: ${m.text()}`);
});
page.on('request', (r) => requested.push(r.url()));
page.on('response', (r) => {
  if (r.status() >= 400) failures.push(`HTTP ${r.status()} for ${r.url()}`);
});

let exitCode = 0;
try {
  // ---- sign in, with the keyboard -----------------------------------------------------------
  log(`dashboard at ${base}, Chromium ${context.browser()?.version() ?? ''}`.trim());
  await page.goto(`${base}/`);
  await page.locator('#token').waitFor();
  check(await page.evaluate(() => document.activeElement?.id === 'token'), 'the token field has focus on load');
  await a11y(page, 'sign-in');
  await shot(page, 'signin');
  await page.keyboard.type(token, { delay: 0 });
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { level: 1, name: 'Destinations' }).waitFor();
  check(await page.evaluate(() => sessionStorage.getItem('hookline.token')?.length > 20), 'token kept in sessionStorage');
  check(await page.evaluate(() => !localStorage.length), 'nothing in localStorage');
  await page.getByText('No destinations yet').waitFor();
  log('signed in');

  // ---- create a destination; field errors next to their fields -------------------------------
  await page.getByRole('link', { name: 'New destination' }).click();
  await page.getByRole('heading', { level: 1, name: 'New destination' }).waitFor();
  await page.getByLabel('Name', { exact: false }).first().fill('orders-webhook');
  await page.getByLabel('Display name').fill('Orders webhook');
  await page.getByLabel('Endpoint URL').fill('ftp://127.0.0.1/orders');
  await page.getByLabel('Description').fill('Order events for the fulfilment service.');
  await page.getByRole('button', { name: 'Create destination' }).click();
  const urlError = page.locator('[data-field="url"] .field-error');
  await urlError.waitFor();
  log(`URL error shown next to the field: "${await urlError.textContent()}"`);
  check(await page.locator('input[name="url"]').getAttribute('aria-invalid') === 'true', 'URL input marked invalid');
  check(await page.locator('.error-summary').isVisible(), 'error summary visible');
  check(await page.evaluate(() => document.activeElement?.classList.contains('error-summary')), 'focus moved to the error summary');
  await a11y(page, 'destination form');
  await shot(page, 'destination-form', { fullPage: true });

  await page.getByLabel('Endpoint URL').fill(receiverUrl);
  await page.getByText('Delivery and retries').click();
  await page.getByLabel('Timeout (ms)').fill('50');
  await page.getByRole('button', { name: 'Create destination' }).click();
  const timeoutError = page.locator('[data-field="timeoutMs"] .field-error');
  await timeoutError.waitFor();
  log(`timeout error shown next to the field: "${await timeoutError.textContent()}"`);
  check(!(await urlError.isVisible()), 'the fixed URL error is gone');

  await page.getByLabel('Timeout (ms)').fill('5000');
  await page.getByLabel('Retry schedule (seconds)').fill('1, 1');
  await page.getByRole('button', { name: 'Create destination' }).click();
  await page.locator('#destination-status[data-status="ACTIVE"]').waitFor();
  const destUrl = page.url();
  const orderId = decodeURIComponent(destUrl.split('#/destinations/')[1]);
  log(`created orders-webhook ${orderId}`);
  await page.getByText('No deliveries yet').waitFor();

  // Two more through the API, so the list shows several states: one healthy, one whose
  // endpoint refuses connections.
  await gql(CREATE, { input: { name: 'crm-sync', displayName: 'CRM sync', url: receiverUrl, eventTypes: ['order.*', 'customer.*'] } });
  const legacy = await gql(CREATE, {
    input: { name: 'legacy-billing', url: 'http://127.0.0.1:9/billing', retrySchedule: [2, 2], maxAttempts: 3, eventTypes: ['order.*'] },
  });

  // ---- live tail ----------------------------------------------------------------------------
  await page.getByRole('link', { name: 'Live', exact: true }).click();
  await page.getByRole('heading', { level: 1, name: 'Live attempts' }).waitFor();
  await page.locator('#live-connection[data-state="connected"]').waitFor();
  log('live tail connected over graphql-transport-ws');
  await publish('order.created', { orderId: 'ord_1042', total: 129.5, currency: 'EUR' });
  const orderRow = page.locator(`#live-rows tr[data-destination="${orderId}"][data-outcome="SUCCESS"]`, { hasText: 'order.created' });
  await orderRow.first().waitFor();
  log('the attempt appeared in the live tail');
  await page.locator('#live-rows tr[data-outcome="FAILURE"]').first().waitFor();
  log('the failing destination\'s attempt appeared too');

  // Pause holds new rows back; resume shows them.
  await page.locator('#live-pause').click();
  check(await page.locator('#live-pause').getAttribute('aria-pressed') === 'true', 'pause is pressed');
  await publish('order.paid', { orderId: 'ord_1042' });
  await page.locator('#live-pause', { hasText: /Resume \(\d+ new\)/ }).waitFor();
  check(await page.locator('#live-rows tr', { hasText: 'order.paid' }).count() === 0, 'no new row while paused');
  await page.locator('#live-pause').click();
  await page.locator('#live-rows tr', { hasText: 'order.paid' }).first().waitFor();
  log('pause and resume work');
  await publish('customer.updated', { customerId: 'cus_77', plan: 'pro' });
  await page.locator('#live-rows tr', { hasText: 'customer.updated' }).first().waitFor();
  await page.waitForTimeout(300);
  await a11y(page, 'live');
  await shot(page, 'live');

  // Filter by destination and outcome: only matching rows stay and arrive.
  await page.getByLabel('Destination').selectOption(orderId);
  await page.getByLabel('Outcome').selectOption('FAILURE');
  await page.waitForTimeout(200);
  check(await page.locator('#live-rows tr').count() === 0, 'no failure rows for orders-webhook');
  await page.getByLabel('Outcome').selectOption('SUCCESS');
  await publish('order.shipped', { orderId: 'ord_1042' });
  await page.locator(`#live-rows tr[data-destination="${orderId}"]`, { hasText: 'order.shipped' }).waitFor();
  check(await page.locator(`#live-rows tr:not([data-destination="${orderId}"])`).count() === 0, 'only orders-webhook rows');
  check(page.url().includes(`destination=${orderId}`) && page.url().includes('outcome=SUCCESS'), 'filters kept in the URL');
  log('filters work');

  // ---- destination page -----------------------------------------------------------------------
  await page.goto(destUrl);
  await page.locator('#destination-status').waitFor();
  const delivery = page.locator('details[data-delivery]', { hasText: 'order.created' });
  await delivery.waitFor();
  await delivery.locator(':scope > summary').click();
  const attempt = delivery.locator('table.attempts tbody tr').first();
  await attempt.waitFor();
  const attemptText = await attempt.textContent();
  check(attemptText.includes('200') && attemptText.includes('Success'), `attempt row shows 200 and Success: ${attemptText}`);
  check((await delivery.locator('td.response').first().textContent()).includes('received'), 'response excerpt shown');
  log('the delivery and its attempt are on the destination page');
  await page.locator('svg[data-chart="attempts"] rect.ok').first().waitFor();
  await page.locator('svg[data-chart="latency"] circle.p95').first().waitFor();
  log('charts drawn');
  await page.getByRole('button', { name: 'Send test event' }).click();
  await page.locator('.action-result', { hasText: 'Test event delivered: HTTP 200' }).waitFor();
  log('test event delivered');
  await page.locator('details[data-delivery]', { hasText: 'hookline.test' }).waitFor();
  await page.getByRole('button', { name: /^Retry delivery of order.created/ }).click();
  await page.locator('.action-result', { hasText: 'queued for another attempt' }).waitFor();
  await page.locator('details[data-delivery]', { hasText: 'order.created' }).locator('table.attempts tbody tr').nth(1).waitFor();
  log('retry made a second attempt');
  await page.getByRole('button', { name: 'Replay deliveries' }).click();
  await page.locator('.action-result', { hasText: /Nothing to replay|queued again/ }).waitFor();
  await page.waitForTimeout(1200);
  await a11y(page, 'destination');
  await shot(page, 'destination', { fullPage: true });

  // The failing destination's page: its failure details and a refused attempt.
  await page.goto(`${base}/#/destinations/${encodeURIComponent(legacy.createDestination.id)}`);
  await page.locator('#destination-status').waitFor();
  const failed = page.locator('details[data-delivery]', { hasText: 'order.created' });
  await failed.locator(':scope > summary').click();
  await failed.locator('table.attempts tbody tr').first().waitFor();
  check((await failed.locator('table.attempts tbody tr').first().textContent()).includes('CONNECT'), 'the refused attempt shows CONNECT');
  await a11y(page, 'failing destination');
  await shot(page, 'destination-failing', { fullPage: true });
  log('the failing destination shows its failed attempts');
  await page.goto(destUrl);
  await page.locator('#destination-status').waitFor();

  // ---- edit: errors next to fields, then only the changed fields are sent --------------------
  await page.getByRole('link', { name: 'Edit' }).click();
  await page.getByRole('heading', { level: 1, name: 'Edit Orders webhook' }).waitFor();
  check(await page.getByLabel('Timeout (ms)').inputValue() === '5000', 'edit form prefilled');
  await page.getByLabel('Timeout (ms)').fill('70000');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('[data-field="timeoutMs"] .field-error', { hasText: '60000' }).waitFor();
  await a11y(page, 'edit form');
  await page.getByRole('button', { name: 'Preview', exact: true }).click();
  await page.locator('#preview-result pre', { hasText: 'webhook-signature: v1,' }).waitFor();
  log('preview shows the signed request');
  await page.getByLabel('Timeout (ms)').fill('8000');
  await page.getByLabel('Description').fill('Order events for the fulfilment service (EU).');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('.flash-msg', { hasText: 'saved' }).waitFor();
  await page.locator('dl.props dd', { hasText: '8.00 s' }).waitFor();
  check(await page.getByText('Order events for the fulfilment service (EU).').isVisible(), 'description updated');
  log('edited: field error shown, then saved');

  // ---- destinations list; disable with the keyboard ------------------------------------------
  await page.getByRole('link', { name: 'Destinations', exact: true }).first().click();
  await page.getByRole('heading', { level: 1, name: 'Destinations' }).waitFor();
  const orderRowList = page.locator(`tr[data-id="${orderId}"]`);
  await orderRowList.locator('.badge[data-status="ACTIVE"]').waitFor();
  check((await orderRowList.textContent()).includes('100 %'), 'success rate 100 % for orders-webhook');
  await page.locator('tr[data-name="legacy-billing"] .badge:not([data-status="ACTIVE"])').waitFor();
  log(`legacy-billing shows ${await page.locator('tr[data-name="legacy-billing"] .badge').getAttribute('data-status')}`);
  const disable = page.getByRole('button', { name: 'Disable Orders webhook' });
  await disable.focus();
  await page.keyboard.press('Enter');
  await orderRowList.locator('.badge[data-status="DISABLED"]').waitFor();
  check(await page.getByRole('button', { name: 'Enable Orders webhook' }).evaluate((b) => b === document.activeElement), 'focus stays on the toggled button');
  log('disabled: the badge changed to DISABLED');
  await page.keyboard.press('Tab');
  await page.mouse.move(0, 0);
  await page.evaluate(() => document.activeElement?.blur());
  await a11y(page, 'destinations');
  await shot(page, 'destinations');
  await page.emulateMedia({ colorScheme: 'dark' });
  await a11y(page, 'destinations (dark)');
  await shot(page, 'destinations-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  await page.goto(destUrl);
  await page.locator('#destination-status[data-status="DISABLED"]').waitFor();
  log('the destination page shows DISABLED too');

  // Keyboard: after a fresh load, the first Tab reaches the skip link.
  await page.reload();
  await page.locator('#destination-status[data-status="DISABLED"]').waitFor();
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement?.classList.contains('skip-link')), 'first Tab focuses the skip link');
  await page.emulateMedia({ colorScheme: 'dark' });
  await a11y(page, 'destination (dark)');
  await page.emulateMedia({ colorScheme: 'light' });

  // ---- GraphiQL, offline ---------------------------------------------------------------------
  // Only this test's event: the failing destination's retries would otherwise replace it in the result pane.
  const sub = 'subscription { deliveryAttempts(eventType: "customer.created") { eventType outcome responseStatus } }';
  await page.goto(`${base}/graphql?query=${encodeURIComponent(sub)}`);
  await page.locator('.graphiql-container').waitFor();
  await page.getByText('token from the dashboard').waitFor();
  await page.locator('.graphiql-execute-button').click();
  await page.waitForTimeout(500);
  await publish('customer.created', { customerId: 'cus_78' });
  await page.locator('.result-window', { hasText: 'customer.created' }).waitFor();
  log('GraphiQL subscription got the attempt over the WebSocket with the dashboard token');
  await page.locator('.graphiql-execute-button').click(); // stop the subscription
  const q = 'query Overview {\n  viewer { tenant subject scopes }\n  destinations(first: 5) {\n    totalCount\n    nodes { name status }\n  }\n}';
  await page.goto(`${base}/graphql?query=${encodeURIComponent(q)}`);
  await page.locator('.graphiql-container').waitFor();
  await page.locator('.graphiql-execute-button').click();
  await page.locator('.result-window', { hasText: '"tenant": "acme"' }).waitFor();
  await page.locator('.graphiql-doc-explorer-search, [aria-label="Show Documentation Explorer"]').first().waitFor();
  log('GraphiQL query ran');

  // The schema GraphiQL fetched by introspection: the documentation explorer lists the root
  // types' fields, and the editor completes field names from it.
  check(!(await page.getByText('Error fetching schema').count()), 'GraphiQL fetched the schema');
  await page.locator('[aria-label="Show Documentation Explorer"]').click();
  const docs = page.locator('.graphiql-doc-explorer');
  await docs.getByRole('link', { name: 'Query', exact: true }).click();
  await docs.locator('.graphiql-doc-explorer-field-name', { hasText: /^destinations$/ }).waitFor();
  await shot(page, 'graphiql');
  await page.locator('.graphiql-doc-explorer-back').click();
  await docs.getByRole('link', { name: 'Subscription', exact: true }).click();
  await docs.locator('.graphiql-doc-explorer-field-name', { hasText: /^deliveryAttempts$/ }).waitFor();
  log('the documentation explorer shows Query.destinations and Subscription.deliveryAttempts');
  await page.locator('.graphiql-query-editor .CodeMirror').click();
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Delete');
  await page.keyboard.type('{ dest', { delay: 30 });
  await page.locator('.CodeMirror-hints li', { hasText: /^destinations$/ }).waitFor();
  log(`autocompletion offers: ${(await page.locator('.CodeMirror-hints li').allInnerTexts()).join(', ')}`);
  await page.keyboard.press('Escape');

  // ---- guards --------------------------------------------------------------------------------
  check(offsite.length === 0, `requests left the server: ${offsite.join(', ')}`);
  check(!requested.some((u) => u.includes(token)), 'the token appeared in a URL');
  check(failures.length === 0, `errors in the browser:\n  ${failures.join('\n  ')}`);
  log(`passed (${requested.length} requests, all to ${serverHost})`);
} catch (e) {
  exitCode = 1;
  console.error(e.stack || String(e));
  if (failures.length) console.error(`browser errors so far:\n  ${failures.join('\n  ')}`);
  try {
    await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true });
    console.error(`screenshot of the failure: ${join(shots, 'failure.png')}`);
  } catch {
    // the page may be gone
  }
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
