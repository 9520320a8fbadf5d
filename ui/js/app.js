// The dashboard shell: sign-in gate, hash routes, page lifecycle, flash messages.
//
//   #/destinations            list            (pages/destinations.js)
//   #/destinations/new        create form     (pages/edit.js)
//   #/destinations/<id>       one destination (pages/destination.js)
//   #/destinations/<id>/edit  edit form       (pages/edit.js)
//   #/live?destination=&outcome=&eventType=   live tail of attempts (pages/live.js)

import { gql, session } from './api.js';
import { clear, h } from './dom.js';
import { signInPage } from './pages/signin.js';
import { destinationsPage } from './pages/destinations.js';
import { destinationPage } from './pages/destination.js';
import { editPage } from './pages/edit.js';
import { livePage } from './pages/live.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const viewerBox = document.getElementById('viewer');
const viewerText = document.getElementById('viewer-text');
const flashBox = document.getElementById('flash');

const routes = [
  [/^\/destinations\/new$/, 'destinations', () => editPage],
  [/^\/destinations\/([^/]+)\/edit$/, 'destinations', () => editPage],
  [/^\/destinations\/([^/]+)$/, 'destinations', () => destinationPage],
  [/^\/destinations$/, 'destinations', () => destinationsPage],
  [/^\/live$/, 'live', () => livePage],
];

let viewer = null;
let current = null; // { cleanups: [], controller }

/** A message that survives one navigation (e.g. "Destination created") and goes at the next. */
export function flash(text, tone = 'ok') {
  flash.keep = 1;
  flashBox.replaceChildren(h('p', { class: `flash-msg tone-${tone}` }, text,
    h('button', { type: 'button', class: 'btn-icon', 'aria-label': 'Dismiss message', onclick: () => flashBox.replaceChildren() }, '×')));
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => flashBox.replaceChildren(), 8000);
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/destinations';
  const [path, qs] = raw.split('?');
  return { path: path.replace(/\/+$/, '') || '/destinations', query: new URLSearchParams(qs || '') };
}

function teardown() {
  if (!current) return;
  current.controller.abort();
  for (const fn of current.cleanups) {
    try {
      fn();
    } catch (e) {
      console.error(e);
    }
  }
  current = null;
}

function setViewer(v) {
  viewer = v;
  nav.hidden = !v;
  viewerBox.hidden = !v;
  viewerText.textContent = v ? `${v.tenant} · ${v.subject}` : '';
  viewerText.title = v ? `Scopes: ${v.scopes.join(' ')}` : '';
}

async function loadViewer() {
  const data = await gql('query Viewer { viewer { tenant subject scopes } }');
  setViewer(data.viewer);
}

async function render() {
  teardown();
  if (flash.keep > 0) flash.keep -= 1;
  else flashBox.replaceChildren();
  const ctx = {
    cleanups: [],
    controller: new AbortController(),
  };
  current = ctx;
  const page = {
    main,
    get signal() {
      return ctx.controller.signal;
    },
    onCleanup: (fn) => ctx.cleanups.push(fn),
    viewer: () => viewer,
    canWrite: () => !!viewer && (viewer.scopes.includes('write') || viewer.scopes.includes('admin')),
    canPublish: () => !!viewer && (viewer.scopes.includes('publish') || viewer.scopes.includes('admin')),
    navigate,
    flash,
    isCurrent: () => current === ctx,
  };

  if (!session.token) {
    setViewer(null);
    clear(main);
    document.title = 'Sign in · Hookline';
    signInPage(page, {
      onSignedIn: (v) => {
        setViewer(v);
        render();
      },
    });
    focusHeading();
    return;
  }
  if (!viewer) {
    try {
      await loadViewer();
    } catch {
      // A rejected token has already sent us to the sign-in page.
      if (!session.token) return;
    }
  }

  const { path, query } = parseHash();
  const hit = routes.find(([re]) => re.test(path));
  for (const a of nav.querySelectorAll('a[data-nav]')) {
    if (hit && a.dataset.nav === hit[1]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  clear(main);
  if (!hit) {
    document.title = 'Not found · Hookline';
    main.append(h('h1', { tabindex: '-1' }, 'Page not found'), h('p', null, h('a', { href: '#/destinations' }, 'Back to destinations')));
    focusHeading();
    return;
  }
  const [re, , pageFn] = hit;
  const params = path.match(re).slice(1).map(decodeURIComponent);
  try {
    await pageFn()(page, { params, query });
  } catch (e) {
    if (e.name === 'AbortError' || current !== ctx) return;
    console.error(e);
    main.append(h('div', { class: 'panel tone-bad', role: 'alert' }, h('h2', null, 'Something went wrong'), h('p', null, e.message)));
  }
  if (current === ctx) focusHeading();
}

let firstRender = true;

/**
 * After a route change, move focus to the page's heading (announced by screen readers). Not
 * on the first load: there the reader starts at the top, with the skip link.
 */
function focusHeading() {
  const h1 = main.querySelector('h1');
  if (!h1) return;
  if (firstRender) {
    firstRender = false;
    return;
  }
  h1.setAttribute('tabindex', '-1');
  if (document.activeElement === document.body || !main.contains(document.activeElement)) {
    h1.focus({ preventScroll: true });
  }
}

session.onRejected = (message) => {
  if (!session.token) return;
  session.clear();
  setViewer(null);
  flash(`Signed out: ${message}`, 'bad');
  render();
};

document.getElementById('sign-out').addEventListener('click', () => {
  session.clear();
  setViewer(null);
  flash('Signed out.', 'info');
  render();
});

window.addEventListener('hashchange', render);
render();
