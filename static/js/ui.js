// The page's chrome: its elements, the status pill, the event log, the error box, the buttons and
// text box, and window.mmsStats, the numbers kept current for tests and curious humans (devtools).
const LOG_LIMIT = 200; // lines kept in the event log

const $ = (id) => document.getElementById(id);
export const el = {
  status: $('status'), sessionId: $('session-id'), rtt: $('rtt'), frames: $('frames'), icePair: $('ice-pair'),
  pipelines: $('pipelines'), start: $('start'), stop: $('stop'), error: $('error'),
  textForm: $('text-form'), textInput: $('text-input'), textSend: $('text-send'),
  localVideo: $('local-video'), localNote: $('local-note'), remoteVideo: $('remote-video'),
  localFigure: $('local-figure'), remoteFigure: $('remote-figure'),
  remoteAudio: $('remote-audio'), results: $('results'), resultsEmpty: $('results-empty'),
  log: $('log'), eventCounts: $('event-counts'),
};

export const stats = window.mmsStats = {
  state: 'idle', sessionId: null, pipelines: [], framesDecoded: 0, videoSize: null, audioPacketsReceived: 0,
  cameraTargetBitrate: null, // bps the browser aims to send the camera at (its bandwidth estimate, the server's REMB)
  eventCounts: {}, selectedPair: null, rttMs: null, lastError: null, last: {},
};

function clock() {
  const d = new Date();
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function log(level, text, serverT) {
  const line = document.createElement('div');
  line.className = `line ${level}`;
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = serverT === undefined ? clock() : `${clock()} t=${Number(serverT).toFixed(2)}`;
  const msg = document.createElement('span');
  msg.className = 'msg';
  msg.textContent = text;
  line.append(time, msg);
  el.log.insertBefore(line, el.log.firstChild);
  while (el.log.childElementCount > LOG_LIMIT) el.log.lastElementChild.remove();
  if (level === 'error') console.warn(text); // eslint-disable-line no-console
}

export function errorText(err) {
  if (!err) return 'unknown error';
  if (err.name && err.name !== 'Error' && err.message) return `${err.name}: ${err.message}`;
  return err.message || String(err);
}

export function showError(text) {
  stats.lastError = text;
  el.error.textContent = text;
  el.error.hidden = false;
  log('error', text);
}

export function clearError() {
  el.error.hidden = true;
  el.error.textContent = '';
}

export function setState(state, label = state) {
  stats.state = state;
  el.status.textContent = label;
  el.status.dataset.state = state;
}

// A new session starts: forget the numbers of the last one.
export function resetDisplays() {
  stats.framesDecoded = 0;
  stats.videoSize = null;
  stats.audioPacketsReceived = 0;
  stats.selectedPair = null;
  stats.rttMs = null;
  stats.sessionId = null;
  stats.eventCounts = {};
  stats.last = {};
  stats.lastError = null;
  el.sessionId.textContent = '–';
  el.rtt.textContent = '–';
  el.frames.textContent = '–';
  el.icePair.textContent = '–';
  el.eventCounts.textContent = '';
}

// Start while nothing runs (once the page may start), Stop while a session runs, the pipeline
// checkboxes between sessions, the text box while the event channel is open.
export function updateControls({canStart, running, channelOpen}) {
  el.start.disabled = running || !canStart;
  el.stop.disabled = !running;
  for (const input of el.pipelines.querySelectorAll('input.pipeline')) input.disabled = running;
  el.textInput.disabled = !channelOpen;
  el.textSend.disabled = !channelOpen;
}

// The buttons and the text box; send(message) returns whether the message went out.
export function wireControls({start, stop, send}) {
  el.start.addEventListener('click', () => { start(); });
  el.stop.addEventListener('click', stop);
  el.textForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = el.textInput.value.trim();
    if (!text) return;
    if (send({type: 'text', text})) {
      log('info', `sent text: ${text.length > 80 ? `${text.slice(0, 80)}…` : text}`);
      el.textInput.value = '';
    }
  });
}
