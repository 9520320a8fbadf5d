// Sign-in: paste a token. It is checked with `viewer` before it is kept.

import { gql, session } from '../api.js';
import { h, whileBusy } from '../dom.js';

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
      '; on its first start without a configured key the server prints a development token.'),
    h('div', { class: 'field', 'data-field': 'token' },
      h('label', { for: 'token' }, 'API token'),
      tokenInput,
      h('p', { class: 'hint', id: 'token-hint' }, 'Kept in this tab\'s session storage only: never in the address bar, gone when the tab closes.'),
      error),
    h('div', { class: 'actions' }, submit));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = tokenInput.value.trim().replace(/^Bearer\s+/i, '');
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
