// Sign-in: paste a token. It is checked with `viewer` before it is kept.

import { gql, session } from '../api.js';
import { h, whileBusy } from '../dom.js';

/**
 * Accepts the token itself, `Bearer <token>`, or the `{"Authorization": "Bearer <token>"}`
 * header line that the server prints at start-up.
 */
function tokenFrom(raw) {
  let text = raw.trim();
  if (text.startsWith('{')) {
    try {
      const obj = JSON.parse(text);
      const key = Object.keys(obj).find((k) => k.toLowerCase() === 'authorization');
      if (key && typeof obj[key] === 'string') text = obj[key].trim();
    } catch {
      // not JSON: use as typed
    }
  }
  return text.replace(/^Bearer\s+/i, '');
}

export function signInPage(page, { onSignedIn }) {
  const tokenInput = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'off',
    spellcheck: 'false',
    required: true,
    'aria-describedby': 'token-hint',
  });
  const error = h('p', { class: 'field-error', id: 'token-error', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Sign in');
  const form = h('form', { class: 'panel signin', 'aria-labelledby': 'signin-title', novalidate: true },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('p', null, 'Paste an API token (a JWT signed with the server\'s key). Mint one with ',
      h('code', null, 'hookline token --tenant acme --scope "read write publish"'),
      '. The development token the server prints at start-up works too, with or without its ',
      h('code', null, '{"Authorization": "Bearer …"}'), ' wrapping.'),
    h('div', { class: 'field', 'data-field': 'token' },
      h('label', { for: 'token' }, 'API token'),
      tokenInput,
      h('p', { class: 'hint', id: 'token-hint' }, 'Kept in this tab\'s session storage only: never in the address bar, gone when the tab closes.'),
      error),
    h('div', { class: 'actions' }, submit));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = tokenFrom(tokenInput.value);
    const showError = (msg) => {
      error.textContent = msg;
      error.hidden = false;
      tokenInput.setAttribute('aria-invalid', 'true');
      tokenInput.setAttribute('aria-describedby', 'token-hint token-error');
      tokenInput.focus();
    };
    if (!token) {
      showError('Paste a token first.');
      return;
    }
    await whileBusy(submit, 'Signing in…', async () => {
      try {
        const data = await gql('query Viewer { viewer { tenant subject scopes } }', {}, { token });
        session.set(token);
        tokenInput.value = '';
        onSignedIn(data.viewer);
      } catch (err) {
        showError(err.code === 'UNAUTHENTICATED' ? `The server refused this token: ${err.message}` : err.message);
      }
    });
  });

  page.main.append(form);
  tokenInput.focus();
}
