// The Results panel: one card per pipeline (.value, .meter, .detail, .card-error). A pipeline's UI
// module may add to its card (cardSetup) and fill it; other events get a generic card.
import {el} from './ui.js';

// pipeline -> fn(cardElement), called whenever its card is (re)created (see plugins.js).
export const cardSetup = {};

export function percent(score) {
  return typeof score === 'number' ? `${Math.round(score * 100)}%` : '';
}

// An event as short text, without its type and time.
export function summary(msg) {
  const rest = Object.fromEntries(Object.entries(msg).filter(([k]) => k !== 'type' && k !== 't'));
  const text = JSON.stringify(rest);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

export function resetResults(names) {
  for (const box of el.results.querySelectorAll('.card')) box.remove();
  el.resultsEmpty.hidden = false;
  for (const name of names) card(name);
}

// The card of `name`, made if missing.
export function card(name) {
  let box = document.getElementById(`card-${name}`);
  if (box) return box;
  box = document.createElement('article');
  box.className = 'card';
  box.id = `card-${name}`;
  const title = document.createElement('h3');
  title.textContent = name;
  const value = document.createElement('div');
  value.className = 'value';
  value.id = `result-${name}`;
  value.textContent = 'waiting…';
  value.dataset.waiting = '';
  const meter = document.createElement('div');
  meter.className = 'meter';
  meter.hidden = true;
  meter.append(document.createElement('span'));
  const detail = document.createElement('div');
  detail.className = 'detail';
  const err = document.createElement('div');
  err.className = 'card-error';
  err.hidden = true;
  box.append(title, value, meter, detail, err);
  el.results.append(box);
  el.resultsEmpty.hidden = true;
  if (cardSetup[name]) cardSetup[name](box);
  return box;
}

export function cardError(name, message) {
  const box = card(name);
  const err = box.querySelector('.card-error');
  err.textContent = message;
  err.hidden = false;
}

// An event no pipeline UI renders: its text (or the whole event) on a card named after its type.
export function renderGeneric(type, msg) {
  const box = card(type);
  const value = box.querySelector('.value');
  delete value.dataset.waiting;
  const text = msg.text || msg.label || msg.transcript || msg.caption;
  value.textContent = typeof text === 'string' ? text : summary(msg);
  box.querySelector('.detail').textContent = typeof text === 'string' ? summary(msg) : '';
}
