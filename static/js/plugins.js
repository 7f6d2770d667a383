// The API a pipeline's own UI gets. Each pipeline may ship static/pipelines/<name>.js, an ES module
// whose default export is called once with this object (also window.mms); it registers renderers
// for its event types and may add controls. A pipeline without one: its events get generic cards.
//   renderers: event type -> fn(msg) that renders it (and may return its log line);
//   cardSetup: pipeline -> fn(cardElement), called whenever its result card is (re)created, to
//     add custom content;
//   controls(name): the pipeline's entry in the Pipelines list (for controls needed before Start);
//   card(name): the result card (.value, .meter, .detail, .card-error);
//   send(msg): a data-channel message; log(level, text, t); session(): {id, pipelines} or null;
//   client(): the running session of mms-client.js (docs/client.md), or null;
//   percent(score), summary(msg): text helpers; fetch(url, init): fetch with the page's credential.
import {log, errorText} from './ui.js';
import {card, cardSetup, percent, summary} from './cards.js';
import {renderers} from './events.js';
import {send, session, client} from './connection.js';
import {authFetch} from './auth.js';

export const mms = window.mms = {
  renderers, cardSetup, card, log, send, percent, summary, session, client, fetch: authFetch,
  controls: (name) => document.getElementById(`entry-${name}`),
};

// Loads and sets up the UI module of pipeline `name`, if it has one.
export async function loadPipelineUi(name) {
  try {
    const module = await import(`/static/pipelines/${encodeURIComponent(name)}.js`);
    if (typeof module.default === 'function') module.default(mms);
  } catch (err) {
    // No UI module for this pipeline (404) or a broken one: its events use the generic card.
    if (!String(err).includes('Failed to fetch')) log('error', `UI of ${name}: ${errorText(err)}`);
  }
}
