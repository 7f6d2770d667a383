// The page's session: the camera and microphone, then a session of mms-client.js (signalling, the
// "events" channel, pings, reconnection, teardown), shown on the page as it goes.
import {connect} from '../mms-client.js';
import {el, stats, log, showError, setState, errorText} from './ui.js';
import {token} from './auth.js';
import {getLocalMedia, showLocalMedia, showRemoteTrack, clearMedia, stopTracks, pollStats} from './media.js';

const STATS_INTERVAL_MS = 1000;

let current = null; // the running session: {client, stream, stopped, sessionId, pipelines, ...}

// The running session as {id, pipelines}, or null.
export function session() {
  return current && !current.stopped ? {id: current.sessionId, pipelines: current.pipelines} : null;
}

// The mms-client.js session (docs/client.md) while one runs, else null.
export function client() {
  return current && !current.stopped ? current.client : null;
}

export function channelOpen() {
  return Boolean(client() && current.client.state === 'connected');
}

// Sends a message on the event channel; false if it is not open.
export function send(message) {
  return channelOpen() && current.client.send(message);
}

// Starts a session: `names` the pipelines (null: the server's defaults), `options` theirs;
// onChange() after it connected, reconnected or ended; onEvent(msg) for each server event.
export async function start(names, options, {onChange, onEvent, room, onSlotTrack}) {
  const run = current = {
    client: null, stream: null, stopped: false, sessionId: null, pipelines: names || [], timers: [],
    onChange, onEvent, onSlotTrack,
  };
  try {
    run.stream = await getLocalMedia();
    if (run.stopped) { stopTracks(run.stream); return; }
    showLocalMedia(run);
    setState('connecting');
    run.client = await connect(location.origin, {
      pipelines: names || undefined, options, stream: run.stream || undefined, token, room,
      on: {'*': (event) => onClientEvent(run, event)},
    });
  } catch (err) {
    if (run.stopped) return;
    showError(err.status ? `The server refused the session (HTTP ${err.status}): ${err.message}`
      : `Cannot start the session: ${errorText(err)}`);
    teardown(run, 'failed');
    return;
  }
  if (run.stopped) { run.client.close(); return; } // Stop pressed while it connected
  log('info', `session ${run.sessionId} negotiated; pipelines: ${(names || ['(server defaults)']).join(', ') || 'none'}`);
  run.timers.push(setInterval(() => pollStats(run), STATS_INTERVAL_MS));
  run.onChange();
}

function showSessionId(run, id) {
  run.sessionId = stats.sessionId = id || run.sessionId;
  el.sessionId.textContent = run.sessionId || '?';
  el.sessionId.title = run.sessionId || '';
}

// The client's events: its own (local) ones change what the page shows, the server's go on.
function onClientEvent(run, event) {
  if (run.stopped) return;
  if (event.local) {
    switch (event.type) {
      case 'connection':
        log(event.state === 'failed' ? 'error' : 'info', `connection ${event.state}`);
        if (event.state === 'connected' || event.state === 'disconnected') setState(event.state);
        return;
      case 'track':
        showRemoteTrack(event.track);
        return;
      case 'slot-track':
        if (run.onSlotTrack) run.onSlotTrack(event.mid, event.track);
        return;
      case 'reconnecting':
        setState('reconnecting', 'reconnecting…');
        log('warn', `connection lost (${event.reason}); reconnecting, attempt ${event.attempt}`);
        run.onChange();
        return;
      case 'closed':
        showError(`The session ended: ${event.reason}`);
        teardown(run, 'closed');
        return;
      default:
        return;
    }
  }
  if (event.type === 'ready' || event.type === 'resumed') {
    showSessionId(run, event.session_id);
    if (Array.isArray(event.pipelines)) run.pipelines = event.pipelines;
  }
  if (event.type === 'resumed') {
    setState('connected');
    run.onChange();
  }
  if (event.type === 'pong' && run.client && run.client.rttMs !== null) {
    stats.rttMs = run.client.rttMs;
    el.rtt.textContent = `${stats.rttMs.toFixed(0)} ms`;
  }
  run.onEvent(event);
}

function teardown(run, state, note) {
  if (!run || run.stopped) return;
  run.stopped = true;
  for (const timer of run.timers) clearInterval(timer);
  run.timers = [];
  if (run.client) {
    pollStats(run, true); // last numbers, before closing
    run.client.close();
  }
  clearMedia(run.stream);
  if (current === run) current = null;
  setState(state);
  if (note) log(state === 'failed' ? 'error' : 'info', note);
  run.onChange();
}

// Ends the running session, if any; `note` goes to the log.
export function localStream() {
  return current ? current.stream : null;
}

export function stop(note) {
  if (current) teardown(current, 'closed', note);
}
