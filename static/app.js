// The web client: camera + microphone -> WebRTC -> the server's pipelines; results come back on
// the "events" data channel, returned audio/video on the peer connection. Plain JS, no build step.
'use strict';

(() => {
  const LOG_LIMIT = 200; // lines kept in the event log
  const PING_INTERVAL_MS = 2000; // also the heartbeat: the server closes sessions silent for 10 s
  const PONG_WARN_MS = 8000; // warn when no pong arrived for this long
  const STATS_INTERVAL_MS = 1000;
  const ICE_GATHER_TIMEOUT_MS = 5000;
  const ECHO = {echoCancellation: true, noiseSuppression: true};

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'), sessionId: $('session-id'), rtt: $('rtt'), frames: $('frames'), icePair: $('ice-pair'),
    pipelines: $('pipelines'), start: $('start'), stop: $('stop'), error: $('error'),
    textForm: $('text-form'), textInput: $('text-input'), textSend: $('text-send'),
    localVideo: $('local-video'), localNote: $('local-note'), remoteVideo: $('remote-video'),
    localFigure: $('local-figure'), remoteFigure: $('remote-figure'),
    remoteAudio: $('remote-audio'), results: $('results'), resultsEmpty: $('results-empty'),
    log: $('log'), eventCounts: $('event-counts'),
  };

  // Kept current for tests and curious humans (devtools): window.mmsStats.
  const stats = window.mmsStats = {
    state: 'idle', sessionId: null, pipelines: [], framesDecoded: 0, audioPacketsReceived: 0,
    eventCounts: {}, selectedPair: null, rttMs: null, lastError: null, last: {},
  };

  let health; // the /health answer once loaded; null if it failed, undefined until then
  let unsupported = false; // no WebRTC in this browser
  let current = null; // the running session, see start()

  // --- small helpers ------------------------------------------------------------------------
  function clock() {
    const d = new Date();
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function log(level, text, serverT) {
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

  function showError(text) {
    stats.lastError = text;
    el.error.textContent = text;
    el.error.hidden = false;
    log('error', text);
  }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = '';
  }

  function setState(state) {
    stats.state = state;
    el.status.textContent = state;
    el.status.dataset.state = state;
  }

  function errorText(err) {
    if (!err) return 'unknown error';
    if (err.name && err.name !== 'Error' && err.message) return `${err.name}: ${err.message}`;
    return err.message || String(err);
  }

  function updateControls() {
    const running = current !== null;
    el.start.disabled = running || health === undefined || unsupported;
    el.stop.disabled = !running;
    for (const input of el.pipelines.querySelectorAll('input.pipeline')) input.disabled = running;
    const open = running && current.dc && current.dc.readyState === 'open';
    el.textInput.disabled = !open;
    el.textSend.disabled = !open;
  }

  // --- pipelines list (from /health) ----------------------------------------------------------
  async function loadPipelines() {
    try {
      const resp = await fetch('/health', {cache: 'no-store'});
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      health = await resp.json();
    } catch (err) {
      health = null;
      el.pipelines.innerHTML = '';
      const p = document.createElement('p');
      p.className = 'muted';
      p.textContent = 'Could not list pipelines; Start uses the server defaults.';
      el.pipelines.append(p);
      showError(`Cannot reach the server's /health: ${errorText(err)}`);
      updateControls();
      return;
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
    await Promise.all(Object.keys(health.pipelines || {}).map(loadPipelineUi));
    updateControls();
  }

  // Each pipeline may ship its own UI as static/pipelines/<name>.js, an ES module whose default
  // export is called with the page API (window.mms) once; it registers renderers for its event
  // types in mms.renderers and may add controls with mms.panel(name). None: generic cards.
  async function loadPipelineUi(name) {
    try {
      const module = await import(`/static/pipelines/${encodeURIComponent(name)}.js`);
      if (typeof module.default === 'function') module.default(window.mms);
    } catch (err) {
      // No UI module for this pipeline (404) or a broken one: its events use the generic card.
      if (!String(err).includes('Failed to fetch')) log('error', `UI of ${name}: ${errorText(err)}`);
    }
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
      if (!current || !current.dc || current.dc.readyState !== 'open') return;
      if (!current.pipelines.includes(pipeline)) return;
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

  function selectedPipelines() {
    if (!health) return null; // unknown: let the server use its defaults
    return [...el.pipelines.querySelectorAll('input.pipeline:checked')].map((i) => i.value);
  }

  function changedOptions(names) {
    const options = {};
    for (const input of el.pipelines.querySelectorAll('input.option-input')) {
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

  // --- local media ------------------------------------------------------------------------------
  async function getLocalMedia() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      log('warn', 'camera/microphone API unavailable (the page needs https or localhost): receive-only');
      return null;
    }
    const attempts = [
      [{audio: ECHO, video: true}, null],
      [{audio: ECHO}, 'no camera: sending audio only'],
      [{video: true}, 'no microphone: sending video only'],
    ];
    let lastError = null;
    for (const [constraints, fallbackNote] of attempts) {
      try {
        const stream = await navigator.mediaDevices.getUserMedia(constraints);
        if (fallbackNote) log('warn', `${fallbackNote} (${errorText(lastError)})`);
        return stream;
      } catch (err) {
        lastError = err;
        if (err && err.name === 'NotAllowedError' && constraints.audio && constraints.video) {
          // permission denied for both: the single-device retries may still succeed
          log('warn', `camera+microphone: ${errorText(err)}`);
        }
      }
    }
    log('warn', `no camera or microphone (${errorText(lastError)}): receive-only`);
    return null;
  }

  // --- session --------------------------------------------------------------------------------
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

  function send(message) {
    if (!current || !current.dc || current.dc.readyState !== 'open') return false;
    current.dc.send(JSON.stringify(message));
    return true;
  }

  async function start() {
    if (current) return;
    clearError();
    const names = selectedPipelines();
    let options = {};
    try {
      options = names ? changedOptions(names) : {};
    } catch (err) {
      showError(errorText(err));
      return;
    }
    for (const input of el.pipelines.querySelectorAll('input.option-input')) {
      delete input.dataset.pending;
      try {
        input.dataset.confirmed = JSON.stringify(optionValue(input));
      } catch (err) { /* checked by changedOptions above */ }
    }
    const run = current = {
      pc: null, dc: null, stream: null, timers: [], pings: new Map(), pingId: 0, lastPong: 0,
      pongWarned: false, pipelines: names || [], stopped: false, sessionId: null,
    };
    stats.framesDecoded = 0;
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
    resetResults(run.pipelines);
    updateControls();
    setState('media');

    try {
      run.stream = await getLocalMedia();
      if (run.stopped) { stopTracks(run.stream); return; }
      const localTracks = run.stream ? run.stream.getTracks() : [];
      for (const track of localTracks) {
        track.addEventListener('ended', () => {
          if (!run.stopped) log('warn', `local ${track.kind} ended (device gone or blocked)`);
        });
      }
      const has = (kind) => localTracks.some((t) => t.kind === kind);
      el.localVideo.srcObject = has('video') ? run.stream : null;
      if (has('video')) delete el.localFigure.dataset.empty;
      else el.localFigure.dataset.empty = has('audio') ? 'no camera' : 'receive only';
      el.localNote.textContent = has('video') ? (has('audio') ? '' : '(no microphone)')
        : (has('audio') ? '(no camera)' : '(receive only)');
      log('info', `sending: ${localTracks.map((t) => `${t.kind} "${t.label}"`).join(', ') || 'nothing (receive only)'}`);

      setState('connecting');
      const iceServers = health && Array.isArray(health.ice_servers) ? health.ice_servers : [];
      const pc = run.pc = new RTCPeerConnection({iceServers});
      pc.addEventListener('connectionstatechange', () => onConnectionState(run));
      pc.addEventListener('iceconnectionstatechange', () => {
        if (!run.stopped) log('info', `ICE ${pc.iceConnectionState}`);
      });
      pc.addEventListener('track', (ev) => onTrack(run, ev));
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
      let resp;
      try {
        resp = await fetch('/offer', {
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

  function stopTracks(stream) {
    if (stream) for (const track of stream.getTracks()) track.stop();
  }

  function teardown(run, state, note) {
    if (!run || run.stopped) return;
    run.stopped = true;
    for (const timer of run.timers) clearInterval(timer);
    run.timers = [];
    if (run.pc) pollStats(run, true); // last numbers, before closing
    try { if (run.dc) run.dc.close(); } catch (err) { /* already closed */ }
    try { if (run.pc) run.pc.close(); } catch (err) { /* already closed */ }
    stopTracks(run.stream);
    el.localVideo.srcObject = null;
    el.remoteVideo.srcObject = null;
    el.remoteAudio.srcObject = null;
    el.localNote.textContent = '';
    el.localFigure.dataset.empty = 'camera off';
    el.remoteFigure.dataset.empty = 'not connected';
    if (current === run) current = null;
    setState(state);
    if (note) log(state === 'failed' ? 'error' : 'info', note);
    updateControls();
  }

  function stop() {
    if (current) teardown(current, 'closed', 'stopped');
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

  function onTrack(run, ev) {
    if (run.stopped) return;
    const track = ev.track;
    log('info', `receiving ${track.kind}`);
    if (track.kind === 'video') {
      el.remoteVideo.srcObject = new MediaStream([track]);
      delete el.remoteFigure.dataset.empty;
      el.remoteVideo.play().catch(() => {});
    } else if (track.kind === 'audio') {
      el.remoteAudio.srcObject = new MediaStream([track]);
      el.remoteAudio.play().catch((err) => log('warn', `returned audio blocked by the browser: ${errorText(err)}`));
    }
  }

  function onChannelOpen(run) {
    if (run.stopped) return;
    log('info', 'event channel open');
    run.lastPong = performance.now();
    ping(run);
    run.timers.push(setInterval(() => ping(run), PING_INTERVAL_MS));
    updateControls();
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

  // --- server events ------------------------------------------------------------------------
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
    const type = typeof msg.type === 'string' ? msg.type : '?';
    stats.eventCounts[type] = (stats.eventCounts[type] || 0) + 1;
    stats.last[type] = msg;
    el.eventCounts.textContent = Object.entries(stats.eventCounts).map(([k, n]) => `${k} ${n}`).join(' · ');
    switch (type) {
      case 'pong': return onPong(run, msg);
      case 'ready':
        run.sessionId = stats.sessionId = msg.session_id || run.sessionId;
        el.sessionId.textContent = run.sessionId || '?';
        if (Array.isArray(msg.pipelines)) {
          run.pipelines = msg.pipelines;
          stats.pipelines = msg.pipelines;
          resetResults(msg.pipelines);
        }
        log('info', `ready: pipelines ${(msg.pipelines || []).join(', ') || 'none'}`, msg.t);
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
        const render = mms.renderers[type];
        const line = render ? render(msg) : renderGeneric(type, msg);
        log('event', typeof line === 'string' ? line : `${type} ${summary(msg)}`, msg.t);
      }
    }
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

  function optionInputs(pipeline) {
    return [...el.pipelines.querySelectorAll('input.option-input')].filter((i) => i.dataset.pipeline === pipeline);
  }

  function showOption(input, value) {
    if (input.type === 'checkbox') input.checked = Boolean(value);
    else input.value = typeof value === 'string' ? value : JSON.stringify(value);
  }

  // A "config" event carries the pipeline's options as the server now has them.
  function syncOptions(pipeline, options) {
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
  function revertPendingOptions(pipeline) {
    for (const input of optionInputs(pipeline)) {
      if (!('pending' in input.dataset)) continue;
      delete input.dataset.pending;
      showOption(input, JSON.parse(input.dataset.confirmed));
      input.classList.add('rejected');
      setTimeout(() => input.classList.remove('rejected'), 2000);
    }
  }

  function percent(score) {
    return typeof score === 'number' ? `${Math.round(score * 100)}%` : '';
  }

  function summary(msg) {
    const rest = Object.fromEntries(Object.entries(msg).filter(([k]) => k !== 'type' && k !== 't'));
    const text = JSON.stringify(rest);
    return text.length > 300 ? `${text.slice(0, 300)}…` : text;
  }

  // --- result cards ----------------------------------------------------------------------------
  function resetResults(names) {
    for (const card of el.results.querySelectorAll('.card')) card.remove();
    el.resultsEmpty.hidden = false;
    for (const name of names) card(name);
  }

  function card(name) {
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
    if (mms.cardSetup[name]) mms.cardSetup[name](box);
    return box;
  }

  function cardError(name, message) {
    const box = card(name);
    const err = box.querySelector('.card-error');
    err.textContent = message;
    err.hidden = false;
  }

  function renderGeneric(type, msg) {
    const box = card(type);
    const value = box.querySelector('.value');
    delete value.dataset.waiting;
    const text = msg.text || msg.label || msg.transcript || msg.caption;
    value.textContent = typeof text === 'string' ? text : summary(msg);
    box.querySelector('.detail').textContent = typeof text === 'string' ? summary(msg) : '';
  }

  // --- stats -------------------------------------------------------------------------------------
  function describeCandidate(c) {
    if (!c) return null;
    return {
      address: c.address || c.ip || null, port: c.port, type: c.candidateType,
      protocol: c.protocol, networkType: c.networkType,
    };
  }

  async function pollStats(run, final = false) {
    const pc = run.pc;
    if (!pc || (run.stopped && !final) || pc.signalingState === 'closed') return;
    let report;
    try {
      report = await pc.getStats();
    } catch (err) {
      return;
    }
    let frames = 0;
    let audioPackets = 0;
    let selectedId = null;
    const pairs = [];
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === 'video') frames += s.framesDecoded || 0;
      if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === 'audio') audioPackets += s.packetsReceived || 0;
      if (s.type === 'transport' && s.selectedCandidatePairId) selectedId = s.selectedCandidatePairId;
      if (s.type === 'candidate-pair') pairs.push(s);
    });
    const pair = (selectedId && report.get(selectedId))
      || pairs.find((p) => p.selected) // Firefox
      || pairs.find((p) => p.nominated && p.state === 'succeeded');
    stats.framesDecoded = Math.max(frames, final ? stats.framesDecoded : 0);
    stats.audioPacketsReceived = Math.max(audioPackets, final ? stats.audioPacketsReceived : 0);
    if (pair) {
      stats.selectedPair = {
        local: describeCandidate(report.get(pair.localCandidateId)),
        remote: describeCandidate(report.get(pair.remoteCandidateId)),
        state: pair.state, currentRoundTripTime: pair.currentRoundTripTime,
      };
      const {local, remote} = stats.selectedPair;
      if (local && remote) {
        el.icePair.textContent = `${local.address}:${local.port} ⇄ ${remote.address}:${remote.port}`;
        el.icePair.title = `${local.type}/${local.protocol} ⇄ ${remote.type}/${remote.protocol}`;
      }
    }
    if (!run.stopped || final) el.frames.textContent = String(stats.framesDecoded);
  }

  // --- the API pipeline UI modules get (static/pipelines/<name>.js) ------------------------------
  // renderers: event type -> fn(msg) that renders it (and may return its log line);
  // cardSetup: pipeline -> fn(cardElement), called whenever its result card is (re)created, to add
  // custom content; controls(name): the pipeline's entry in the Pipelines list (for controls
  // needed before Start); card(name): the result card (.value, .meter, .detail, .card-error);
  // send(msg): a data-channel message; log(level, text, t); session(): {id, pipelines} or null.
  const mms = window.mms = {
    renderers: {}, cardSetup: {}, card, log, send, percent, summary,
    controls: (name) => document.getElementById(`entry-${name}`),
    session: () => (current && !current.stopped ? {id: current.sessionId, pipelines: current.pipelines} : null),
  };

  // --- wiring -----------------------------------------------------------------------------------
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
  // Close the connection when the page goes away, so the server frees the session at once.
  window.addEventListener('pagehide', () => { if (current) teardown(current, 'closed'); });

  if (!window.RTCPeerConnection) {
    unsupported = true;
    showError('This browser does not support WebRTC.');
  }
  updateControls();
  if (window.RTCPeerConnection) loadPipelines();
})();
