// The server's events, as they arrive on the data channel: counted, then shown. The page handles
// "ready", "error" and "config"; other types go to the renderer a pipeline's UI module registered
// (see plugins.js), else to a generic card.
import {el, stats, log} from './ui.js';
import {cardError, renderGeneric, resetResults, summary} from './cards.js';
import {syncOptions, revertPendingOptions} from './pipeline-list.js';

// event type -> fn(msg) that renders it (and may return its log line).
export const renderers = {};

export function handleEvent(msg) {
  const type = typeof msg.type === 'string' ? msg.type : '?';
  stats.eventCounts[type] = (stats.eventCounts[type] || 0) + 1;
  stats.last[type] = msg;
  el.eventCounts.textContent = Object.entries(stats.eventCounts).map(([k, n]) => `${k} ${n}`).join(' · ');
  switch (type) {
    case 'pong': return; // the connection measures the round trip
    case 'ready':
      if (Array.isArray(msg.pipelines)) {
        stats.pipelines = msg.pipelines;
        resetResults(msg.pipelines);
      }
      log('info', `ready: pipelines ${(msg.pipelines || []).join(', ') || 'none'}`, msg.t);
      return;
    case 'resumed':
      log('info', `resumed: the same session on a new connection; ${msg.queued} event(s) kept meanwhile` +
          (msg.dropped ? `, ${msg.dropped} lost` : ''), msg.t);
      return;
    case 'error': {
      const where = msg.pipeline ? `${msg.pipeline}: ` : '';
      const text = String(msg.message);
      log('error', `error ${where}${text.startsWith(where) ? text.slice(where.length) : text}`, msg.t);
      if (msg.pipeline) {
        cardError(msg.pipeline, msg.message);
        revertPendingOptions(msg.pipeline);
      }
      return;
    }
    case 'config':
      log('info', `config ${msg.pipeline}: ${JSON.stringify(msg.options)}`, msg.t);
      syncOptions(msg.pipeline, msg.options || {});
      return;
    default: {
      const render = renderers[type];
      const line = render ? render(msg) : renderGeneric(type, msg);
      log('event', typeof line === 'string' ? line : `${type} ${summary(msg)}`, msg.t);
    }
  }
}
