// The Pipelines list: a checkbox per pipeline the server offers (from /health) and its options.
// Changed options go with the offer at Start; during a session a change is sent at once as a
// "config" message, and the server's "config" / "error" events confirm or revert it.
import {el, log, showError, errorText} from './ui.js';
import {session, channelOpen, send} from './connection.js';
import {authFetch} from './auth.js';

// Lists the pipelines of /health; returns that answer, or null if it failed (shown as an error).
export async function listPipelines() {
  let health;
  try {
    const resp = await authFetch('/health', {cache: 'no-store'});
    // 503: full, draining or overloaded (a balancer's signal); it still lists the pipelines.
    if (!resp.ok && resp.status !== 503) throw new Error(`HTTP ${resp.status}`);
    health = await resp.json();
  } catch (err) {
    el.pipelines.innerHTML = '';
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = 'Could not list pipelines; Start uses the server defaults.';
    el.pipelines.append(p);
    showError(`Cannot reach the server's /health: ${errorText(err)}`);
    return null;
  }
  const defaults = new Set(health.default_pipelines || []);
  el.pipelines.innerHTML = '';
  for (const [name, info] of Object.entries(health.pipelines || {})) {
    el.pipelines.append(pipelineEntry(name, info || {}, defaults.has(name)));
  }
  if (!el.pipelines.childElementCount) {
    el.pipelines.textContent = 'The server offers no pipelines.';
  }
  log('info', `server ok: ${Object.keys(health.pipelines || {}).length} pipeline(s), ` +
      `${health.sessions}/${health.max_sessions} sessions, device ${health.device}`);
  return health;
}

function pipelineEntry(name, info, checked) {
  const box = document.createElement('div');
  box.className = 'pipeline-entry';
  box.id = `entry-${name}`;
  const label = document.createElement('label');
  label.className = 'pipeline-label';
  const input = document.createElement('input');
  input.type = 'checkbox';
  input.className = 'pipeline';
  input.name = 'pipeline';
  input.value = name;
  input.id = `pipeline-${name}`;
  input.checked = checked;
  const title = document.createElement('span');
  title.className = 'pipeline-name';
  title.textContent = name;
  const desc = document.createElement('span');
  desc.className = 'pipeline-desc';
  desc.textContent = info.description || '';
  label.append(input, title, desc);
  box.append(label);

  const defaults = info.defaults || {};
  if (Object.keys(defaults).length) {
    const details = document.createElement('details');
    details.className = 'options';
    const summary = document.createElement('summary');
    summary.textContent = 'options';
    details.append(summary);
    for (const [key, value] of Object.entries(defaults)) {
      details.append(optionRow(name, key, value));
    }
    box.append(details);
  }
  return box;
}

function optionRow(pipeline, key, value) {
  const row = document.createElement('label');
  row.className = 'option';
  const span = document.createElement('span');
  span.textContent = key;
  const input = document.createElement('input');
  input.className = 'option-input';
  input.dataset.pipeline = pipeline;
  input.dataset.key = key;
  input.dataset.kind = typeof value;
  if (typeof value === 'boolean') {
    input.type = 'checkbox';
    input.checked = value;
  } else if (typeof value === 'number') {
    input.type = 'number';
    input.step = 'any';
    input.value = String(value);
  } else {
    input.type = 'text';
    input.value = typeof value === 'string' ? value : JSON.stringify(value);
    if (typeof value !== 'string') input.dataset.kind = 'json';
  }
  input.dataset.default = JSON.stringify(value);
  input.dataset.confirmed = input.dataset.default; // the value the server has (or will get at start)
  // While a session runs, a change is applied at once with a "config" message.
  input.addEventListener('change', () => {
    const running = session();
    if (!running || !channelOpen() || !running.pipelines.includes(pipeline)) return;
    let parsed;
    try {
      parsed = optionValue(input);
    } catch (err) {
      showError(`${pipeline}.${key}: ${errorText(err)}`);
      return;
    }
    if (send({type: 'config', pipeline, options: {[key]: parsed}})) {
      input.dataset.pending = '';
      log('info', `config ${pipeline}.${key} = ${JSON.stringify(parsed)}`);
    }
  });
  row.append(span, input);
  return row;
}

function optionValue(input) {
  switch (input.dataset.kind) {
    case 'boolean': return input.checked;
    case 'number': {
      const n = Number(input.value);
      if (input.value.trim() === '' || !Number.isFinite(n)) throw new Error('not a number');
      return n;
    }
    case 'json': return JSON.parse(input.value);
    default: return input.value;
  }
}

function allOptionInputs() {
  return [...el.pipelines.querySelectorAll('input.option-input')];
}

function optionInputs(pipeline) {
  return allOptionInputs().filter((i) => i.dataset.pipeline === pipeline);
}

export function selectedPipelines() {
  return [...el.pipelines.querySelectorAll('input.pipeline:checked')].map((i) => i.value);
}

// The options of `names` that differ from the server's defaults: {pipeline: {key: value}}.
export function changedOptions(names) {
  const options = {};
  for (const input of allOptionInputs()) {
    const pipeline = input.dataset.pipeline;
    if (!names.includes(pipeline)) continue;
    let value;
    try {
      value = optionValue(input);
    } catch (err) {
      throw new Error(`option ${pipeline}.${input.dataset.key}: ${errorText(err)}`);
    }
    if (JSON.stringify(value) === input.dataset.default) continue;
    (options[pipeline] = options[pipeline] || {})[input.dataset.key] = value;
  }
  return options;
}

// At Start: the values shown are the ones the server will have.
export function confirmOptions() {
  for (const input of allOptionInputs()) {
    delete input.dataset.pending;
    try {
      input.dataset.confirmed = JSON.stringify(optionValue(input));
    } catch (err) { /* checked by changedOptions before */ }
  }
}

function showOption(input, value) {
  if (input.type === 'checkbox') input.checked = Boolean(value);
  else input.value = typeof value === 'string' ? value : JSON.stringify(value);
}

// A "config" event carries the pipeline's options as the server now has them.
export function syncOptions(pipeline, options) {
  for (const input of optionInputs(pipeline)) {
    if (!(input.dataset.key in options)) continue;
    const value = options[input.dataset.key];
    input.dataset.confirmed = JSON.stringify(value);
    delete input.dataset.pending;
    input.classList.remove('rejected');
    if (document.activeElement !== input) showOption(input, value);
  }
}

// The server refused a config change: show the value it kept.
export function revertPendingOptions(pipeline) {
  for (const input of optionInputs(pipeline)) {
    if (!('pending' in input.dataset)) continue;
    delete input.dataset.pending;
    showOption(input, JSON.parse(input.dataset.confirmed));
    input.classList.add('rejected');
    setTimeout(() => input.classList.remove('rejected'), 2000);
  }
}
