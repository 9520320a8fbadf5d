// Form fields with labels, hints and error slots, and the mapping of GraphQL errors
// (`extensions.field`) onto them.

import { h, uniqueId } from './dom.js';

/**
 * A labelled control. `control` is an element whose `name` is the GraphQL field it feeds;
 * the error slot is found again by that name.
 */
export function field(label, control, { hint, required } = {}) {
  const id = control.id || uniqueId(`f-${control.name}`);
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  const errId = `${id}-error`;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  if (required) control.required = true;
  const isCheck = control.type === 'checkbox';
  const labelEl = h('label', { for: id }, label, required ? h('span', { class: 'req', 'aria-hidden': 'true' }, ' *') : null);
  return h('div', { class: `field${isCheck ? ' field-check' : ''}`, 'data-field': control.name },
    isCheck ? [control, labelEl] : [labelEl, control],
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    h('p', { class: 'field-error', id: errId, hidden: true }));
}

export function input(name, attrs = {}) {
  return h('input', { name, type: 'text', autocomplete: 'off', spellcheck: 'false', ...attrs });
}

export function select(name, options, value, attrs = {}) {
  return h('select', { name, ...attrs },
    options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

export function checkbox(name, checked, attrs = {}) {
  return h('input', { type: 'checkbox', name, checked: !!checked, ...attrs });
}

/** The error summary at the top of a form: focused, lists every problem with a link. */
export function errorSummary() {
  return h('div', { class: 'error-summary', role: 'alert', tabindex: '-1', hidden: true });
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll('.field-error')) {
    el.hidden = true;
    el.textContent = '';
  }
  for (const el of form.querySelectorAll('[aria-invalid]')) {
    el.removeAttribute('aria-invalid');
    const hint = el.getAttribute('aria-describedby')?.split(' ').filter((x) => !x.endsWith('-error')).join(' ');
    if (hint) el.setAttribute('aria-describedby', hint);
    else el.removeAttribute('aria-describedby');
  }
  const summary = form.querySelector('.error-summary');
  if (summary) {
    summary.hidden = true;
    summary.replaceChildren();
  }
}

/** `headers[2].name` and `httpAuth.basic.password` belong to the `headers` / `httpAuth` fields. */
function baseField(name) {
  return String(name).split(/[.[]/)[0];
}

/**
 * Shows `problems` ([{field, message}], field may be null) next to their fields and in the
 * summary; moves focus to the summary so keyboard and screen-reader users hear it.
 */
export function showErrors(form, problems) {
  clearErrors(form);
  const summary = form.querySelector('.error-summary');
  const items = [];
  for (const p of problems) {
    const wrap = p.field ? form.querySelector(`[data-field="${CSS.escape(baseField(p.field))}"]`) : null;
    if (wrap) {
      // A field inside a collapsed section: open the section so the error is visible.
      for (let d = wrap.closest('details'); d; d = d.parentElement?.closest('details')) d.open = true;
      const err = wrap.querySelector('.field-error');
      err.textContent = err.textContent ? `${err.textContent} ${p.message}` : p.message;
      err.hidden = false;
      const control = wrap.querySelector('input, select, textarea');
      if (control) {
        control.setAttribute('aria-invalid', 'true');
        const ids = new Set((control.getAttribute('aria-describedby') || '').split(' ').filter(Boolean));
        ids.add(err.id);
        control.setAttribute('aria-describedby', [...ids].join(' '));
        const label = wrap.querySelector('label')?.textContent.replace(/\s*\*$/, '') || p.field;
        items.push(h('li', null, h('a', { href: `#${control.id}`, 'data-focus': control.id }, `${label}: ${p.message}`)));
      } else {
        items.push(h('li', null, p.message));
      }
    } else {
      items.push(h('li', null, p.message));
    }
  }
  if (summary) {
    summary.replaceChildren(
      h('h2', null, problems.length === 1 ? 'There is a problem' : `There are ${problems.length} problems`),
      h('ul', null, items));
    summary.hidden = false;
    // Links in the summary move focus to the field instead of changing the route.
    summary.onclick = (e) => {
      const a = e.target.closest('a[data-focus]');
      if (!a) return;
      e.preventDefault();
      document.getElementById(a.dataset.focus)?.focus();
    };
    summary.focus();
  }
}

/** GraphQL errors → problems for `showErrors`. */
export function problemsFrom(err) {
  const errors = err?.errors || [{ message: err?.message || String(err) }];
  return errors.map((e) => {
    const f = e.extensions?.field || null;
    const message = f && e.message.startsWith(`${f}: `) ? e.message.slice(f.length + 2) : e.message;
    return { field: f, message, code: e.extensions?.code };
  });
}
