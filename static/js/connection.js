// The session with the server: the RTCPeerConnection, signalling (the offer POSTed to /offer, the
// server's answer), the "events" data channel, pings (also the heartbeat) and teardown.
import {el, stats, log, showError, setState, errorText} from './ui.js';
import {authFetch} from './auth.js';
import {getLocalMedia, showLocalMedia, showRemoteTrack, clearMedia, stopTracks, pollStats} from './media.js';

const PING_INTERVAL_MS = 2000; // also the heartbeat: the server closes sessions silent for 10 s
const PONG_WARN_MS = 8000; // warn when no pong arrived for this long
const STATS_INTERVAL_MS = 1000;
const ICE_GATHER_TIMEOUT_MS = 5000;

let current = null; // the running session, see createSession()

// The running session as {id, pipelines}, or null.
export function session() {
  return current && !current.stopped ? {id: current.sessionId, pipelines: current.pipelines} : null;
}

export function channelOpen() {
  return Boolean(current && current.dc && current.dc.readyState === 'open');
}

// Sends a message on the event channel; false if it is not open.
export function send(message) {
  if (!channelOpen()) return false;
  current.dc.send(JSON.stringify(message));
  return true;
}

// The new running session, before it connects. `names`: the pipelines asked for, null for the
// server's defaults; onChange(): after it opened its channel or ended; onEvent(msg): each event.
export function createSession(names, {onChange, onEvent}) {
  current = {
    pc: null, dc: null, stream: null, timers: [], pings: new Map(), pingId: 0, lastPong: 0,
    pongWarned: false, pipelines: names || [], stopped: false, sessionId: null, onChange, onEvent,
  };
  return current;
}

// Media, then the peer connection and its offer, then the server's answer; a failure ends the run.
export async function connect(run, {names, options, iceServers}) {
  try {
    run.stream = await getLocalMedia();
    if (run.stopped) { stopTracks(run.stream); return; }
    showLocalMedia(run);

    setState('connecting');
    const pc = run.pc = new RTCPeerConnection({iceServers});
    pc.addEventListener('connectionstatechange', () => onConnectionState(run));
    pc.addEventListener('iceconnectionstatechange', () => {
      if (!run.stopped) log('info', `ICE ${pc.iceConnectionState}`);
    });
    pc.addEventListener('track', (ev) => { if (!run.stopped) showRemoteTrack(ev.track); });
    const localTracks = run.stream ? run.stream.getTracks() : [];
    for (const kind of ['audio', 'video']) {
      const track = localTracks.find((t) => t.kind === kind);
      if (track) pc.addTrack(track, run.stream);
      else pc.addTransceiver(kind, {direction: 'recvonly'}); // the server's returned media still arrives
    }
    // The channel must exist before the offer, so that the offer has an SCTP section.
    const dc = run.dc = pc.createDataChannel('events');
    dc.addEventListener('open', () => onChannelOpen(run));
    dc.addEventListener('close', () => onChannelClose(run));
    dc.addEventListener('message', (ev) => onMessage(run, ev.data));

    await pc.setLocalDescription(await pc.createOffer());
    if (!(await waitForIceGathering(pc, ICE_GATHER_TIMEOUT_MS))) {
      log('warn', `ICE gathering still running after ${ICE_GATHER_TIMEOUT_MS / 1000}s; offering what was found`);
    }
    if (run.stopped) return;

    setState('negotiating');
    const body = {sdp: pc.localDescription.sdp, type: 'offer', options};
    if (names) body.pipelines = names;
    const answer = await postOffer(body);
    run.sessionId = stats.sessionId = answer.session_id || null;
    el.sessionId.textContent = run.sessionId || '?';
    el.sessionId.title = run.sessionId || '';
    if (run.stopped) return; // Stop pressed meanwhile: the server's session times out by itself
    await pc.setRemoteDescription({type: answer.type || 'answer', sdp: answer.sdp});
    log('info', `session ${run.sessionId} negotiated; pipelines: ${(names || ['(server defaults)']).join(', ') || 'none'}`);
    run.timers.push(setInterval(() => pollStats(run), STATS_INTERVAL_MS));
  } catch (err) {
    if (run.stopped) return;
    showError(errorText(err));
    teardown(run, 'failed');
  }
}

function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (complete) => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      resolve(complete);
    };
    const onChange = () => { if (pc.iceGatheringState === 'complete') done(true); };
    const timer = setTimeout(() => done(false), timeoutMs);
    pc.addEventListener('icegatheringstatechange', onChange);
  });
}

// POST /offer; the server's answer, or an error that says why there is none.
async function postOffer(body) {
  let resp;
  try {
    resp = await authFetch('/offer', {
      method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body),
    });
  } catch (err) {
    throw new Error(`Cannot reach the server: ${errorText(err)}`);
  }
  let answer = null;
  try {
    answer = await resp.json();
  } catch (err) {
    answer = null;
  }
  if (!resp.ok) {
    const why = answer && answer.error ? answer.error : (resp.statusText || 'no reason given');
    throw new Error(`The server refused the session (HTTP ${resp.status}): ${why}`);
  }
  if (!answer || typeof answer.sdp !== 'string') throw new Error('The server sent a malformed answer');
  return answer;
}

function teardown(run, state, note) {
  if (!run || run.stopped) return;
  run.stopped = true;
  for (const timer of run.timers) clearInterval(timer);
  run.timers = [];
  if (run.pc) pollStats(run, true); // last numbers, before closing
  try { if (run.dc) run.dc.close(); } catch (err) { /* already closed */ }
  try { if (run.pc) run.pc.close(); } catch (err) { /* already closed */ }
  clearMedia(run.stream);
  if (current === run) current = null;
  setState(state);
  if (note) log(state === 'failed' ? 'error' : 'info', note);
  run.onChange();
}

// Ends the running session, if any; `note` goes to the log.
export function stop(note) {
  if (current) teardown(current, 'closed', note);
}

function onConnectionState(run) {
  if (run.stopped) return;
  const state = run.pc.connectionState;
  log(state === 'failed' ? 'error' : 'info', `connection ${state}`);
  if (state === 'connected') {
    setState('connected');
  } else if (state === 'disconnected') {
    setState('disconnected'); // may recover by itself; "failed" follows if not
  } else if (state === 'failed') {
    showError('The connection failed (no working network path to the server, or it went away).');
    teardown(run, 'failed');
  } else if (state === 'closed') {
    teardown(run, 'closed', 'connection closed');
  }
}

function onChannelOpen(run) {
  if (run.stopped) return;
  log('info', 'event channel open');
  run.lastPong = performance.now();
  ping(run);
  run.timers.push(setInterval(() => ping(run), PING_INTERVAL_MS));
  run.onChange();
}

function onChannelClose(run) {
  if (run.stopped) return;
  // The server closed the session (e.g. it was shut down or timed us out).
  teardown(run, 'closed', 'the server closed the event channel');
}

function ping(run) {
  if (run.stopped || !run.dc || run.dc.readyState !== 'open') return;
  const now = performance.now();
  if (!run.pongWarned && now - run.lastPong > PONG_WARN_MS) {
    run.pongWarned = true;
    log('warn', `no pong for ${((now - run.lastPong) / 1000).toFixed(0)}s: the server may be stalled`);
  }
  run.pingId += 1;
  run.pings.set(run.pingId, now);
  for (const id of run.pings.keys()) { // forget pings that were never answered
    if (run.pings.size <= 16) break;
    run.pings.delete(id);
  }
  run.dc.send(JSON.stringify({type: 'ping', id: run.pingId}));
}

function onPong(run, msg) {
  const sent = run.pings.get(msg.id);
  run.lastPong = performance.now();
  run.pongWarned = false;
  if (sent === undefined) return;
  run.pings.delete(msg.id);
  stats.rttMs = Math.round((performance.now() - sent) * 10) / 10;
  el.rtt.textContent = `${stats.rttMs.toFixed(0)} ms`;
}

// A message on the event channel: "ready" names the session and its pipelines, "pong" answers a
// ping; every event then goes to run.onEvent.
function onMessage(run, data) {
  if (run.stopped) return;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (err) {
    log('error', `non-JSON message from the server: ${String(data).slice(0, 200)}`);
    return;
  }
  if (!msg || typeof msg !== 'object') return;
  if (msg.type === 'ready') {
    run.sessionId = stats.sessionId = msg.session_id || run.sessionId;
    el.sessionId.textContent = run.sessionId || '?';
    if (Array.isArray(msg.pipelines)) run.pipelines = msg.pipelines;
  }
  run.onEvent(msg);
  if (msg.type === 'pong') onPong(run, msg);
}
