// mms-client.js: the browser client of the multimodal media server (docs/client.md). One ES
// module, no dependencies, no build step:
//
//   import {connect} from '/static/mms-client.js';
//   const session = await connect(serverUrl, {pipelines: ['gender'], stream, token});
//   session.on('gender', (event) => ...);   // any event type; '*' for every event
//   session.sendText('...'); session.config('gender', {interval: 2}); session.interrupt();
//   await session.close();
//
// It owns signalling (POST /offer), the "events" data channel, pings, reconnection with the
// session's resume token when the connection drops, and teardown. Handlers get each server event
// as the server sent it, and the library's own events, marked `local: true`: "connection"
// {state} (the peer connection's), "track" {track} (a returned track arrived), "reconnecting"
// {attempt, reason}, "closed" {reason} (the session is over, for good).

const PING_MS = 2000; // pings are also the heartbeat (the server gives up on a silent client after 10 s)
const PONG_TIMEOUT_MS = 10000; // no pong for this long: the connection is lost
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" often recovers by itself; after this, reconnect
const ICE_GATHER_MS = 5000; // ICE is not trickled: the offer carries what was gathered by then
const GREETING_MS = 20000; // from the answer to the channel's "ready" (or "resumed")
const CLOSE_WAIT_MS = 1000; // for the server to close the channel after "close"
const RETRY_MS = [250, 1000, 2000, 4000]; // between attempts to resume

// A refusal: `status` is the HTTP status (0: the server could not be reached), `message` the
// server's own words (its JSON `error`).
export class ServerError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'ServerError';
    this.status = status;
  }
}

// Opens a session; resolves once its events channel is open and "ready" arrived (handlers given in
// `on` see that "ready" too), or rejects with a ServerError.
//   pipelines: names (default: the server's); options: {pipeline: {option: value}};
//   stream: a MediaStream to send (default: nothing, receive only); token: API key or session
//   token; iceServers: instead of asking the server; on: {type: handler}; reconnect: true;
//   room: {name, displayName, hear, share, originalVolume, slots} to join a room (docs/rooms.md):
//   `slots` receive-only audio+video pairs carry the others; each arriving slot track is a local
//   "slot-track" event {mid, track}, and participant_joined names the mids of each participant.
export async function connect(serverUrl, options = {}) {
  const session = new MmsSession(serverUrl, options);
  try {
    await session._attach(null);
  } catch (err) {
    session._end(err.message, false);
    throw err;
  }
  session._pinger = setInterval(() => session._tick(), PING_MS);
  return session;
}

class MmsSession {
  constructor(serverUrl, {pipelines, options, stream, token, iceServers, on, reconnect = true, room} = {}) {
    const base = new URL(serverUrl || '/', location.href);
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    this.base = base;
    this.sessionId = null;
    this.pipelines = pipelines ? [...pipelines] : [];
    this.ready = null; // the "ready" event
    this.remoteStream = new MediaStream(); // the server's returned audio and video (tracks swapped on resume)
    this.pc = null; // the current RTCPeerConnection (for getStats; the library owns it)
    this.rttMs = null; // round trip of the last ping
    this.state = 'connecting'; // then "connected", "reconnecting", "closed"
    this._request = {pipelines, options: options || {}};
    this._room = room || null;
    this._stream = stream || null;
    this._token = token || '';
    this._iceOption = iceServers || null;
    this._ice = null;
    this._reconnect = reconnect;
    this._handlers = new Map();
    this._dc = null;
    this._greeting = null;
    this._resumeToken = null;
    this._resumeSeconds = 0;
    this._pings = new Map();
    this._pingId = 0;
    this._lastPong = 0;
    this._pinger = null;
    this._closed = false;
    for (const [type, handler] of Object.entries(on || {})) this.on(type, handler);
  }

  // Calls handler(event) for each event of `type` ("*": every event); returns a function that stops it.
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    const set = this._handlers.get(type);
    if (set) set.delete(handler);
  }

  // Sends a message on the events channel; false when it is not open (connecting, reconnecting, closed).
  send(message) {
    if (this.state !== 'connected' || !this._dc || this._dc.readyState !== 'open') return false;
    this._dc.send(JSON.stringify(message));
    return true;
  }

  sendText(text) { return this.send({type: 'text', text}); }

  config(pipeline, options) { return this.send({type: 'config', pipeline, options}); }

  interrupt() { return this.send({type: 'interrupt'}); }

  // Ends the session for good: the server is told ("close"), so it frees it at once.
  async close() {
    if (this._closed) return;
    this._closed = true;
    const dc = this._dc;
    if (dc && dc.readyState === 'open') {
      dc.send(JSON.stringify({type: 'close'}));
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, CLOSE_WAIT_MS);
        dc.addEventListener('close', () => { clearTimeout(timer); resolve(); });
      });
    }
    this._end('closed by the client');
  }

  // --- internals -----------------------------------------------------------------------------
  _emit(event) {
    for (const key of [event.type, '*']) {
      for (const handler of [...(this._handlers.get(key) || [])]) {
        try {
          handler(event);
        } catch (err) {
          queueMicrotask(() => { throw err; }); // the application's error, reported as such
        }
      }
    }
  }

  _local(type, fields) { this._emit({type, ...fields, local: true}); }

  async _fetchJson(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (this._token) headers.set('Authorization', `Bearer ${this._token}`);
    let resp;
    try {
      resp = await fetch(new URL(path, this.base), {...init, headers, cache: 'no-store'});
    } catch (err) {
      throw new ServerError(0, `cannot reach the server: ${err.message || err}`);
    }
    let body = null;
    try { body = await resp.json(); } catch (err) { /* not JSON */ }
    if (!resp.ok) {
      const why = body && typeof body.error === 'string' ? body.error : (resp.statusText || 'no reason given');
      throw new ServerError(resp.status, why);
    }
    if (!body || typeof body !== 'object') throw new ServerError(resp.status, 'the server sent a malformed answer');
    return body;
  }

  // STUN/TURN servers: GET /ice-servers (kept until a minute before they expire), else /health's.
  async _iceServers() {
    if (this._iceOption) return this._iceOption;
    if (this._ice && (this._ice.expires === null || this._ice.expires - Date.now() > 60000)) return this._ice.servers;
    let servers;
    let expires = null;
    try {
      const answer = await this._fetchJson('ice-servers');
      servers = answer.ice_servers;
      const at = answer.expires_at;
      expires = typeof at === 'number' ? at * 1000 : (typeof at === 'string' ? Date.parse(at) : null);
      if (Number.isNaN(expires)) expires = null;
    } catch (err) {
      if (err.status !== 404) throw err;
      servers = (await this._fetchJson('health')).ice_servers; // a server without /ice-servers
    }
    this._ice = {servers: Array.isArray(servers) ? servers : [], expires};
    return this._ice.servers;
  }

  // A new peer connection, offered to the server (a new session, or `resume` one); resolves once
  // the channel said "ready" (or "resumed").
  async _attach(resume) {
    const iceServers = await this._iceServers();
    if (this._closed) throw new ServerError(0, 'closed');
    const pc = this.pc = new RTCPeerConnection({iceServers});
    const live = this._stream ? this._stream.getTracks().filter((t) => t.readyState === 'live') : [];
    for (const kind of ['audio', 'video']) {
      const track = live.find((t) => t.kind === kind);
      if (track) pc.addTrack(track, this._stream);
      else pc.addTransceiver(kind, {direction: 'recvonly'}); // the returned media still arrives
    }
    const own = new Set(pc.getTransceivers());
    for (let i = 0; this._room && i < (this._room.slots ?? 3); i++) { // a room's others (docs/rooms.md)
      pc.addTransceiver('audio', {direction: 'recvonly'});
      pc.addTransceiver('video', {direction: 'recvonly'});
    }
    const dc = this._dc = pc.createDataChannel('events'); // before the offer: it needs an SCTP section
    const greeted = new Promise((resolve, reject) => { this._greeting = {resolve, reject}; });
    greeted.catch(() => {});
    pc.addEventListener('track', (ev) => {
      if (this.pc !== pc) return;
      if (own.has(ev.transceiver)) this._onTrack(ev.track);
      else this._local('slot-track', {mid: ev.transceiver.mid, track: ev.track});
    });
    pc.addEventListener('connectionstatechange', () => this._onConnectionState(pc));
    dc.addEventListener('message', (ev) => { if (this._dc === dc) this._onMessage(ev.data); });
    dc.addEventListener('close', () => { if (this._dc === dc) this._lost('the events channel closed'); });

    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, ICE_GATHER_MS);
    const body = {type: 'offer', sdp: pc.localDescription.sdp};
    if (resume) body.resume = resume;
    else {
      body.options = this._request.options;
      if (this._request.pipelines) body.pipelines = this._request.pipelines;
      const room = this._room;
      if (room) {
        Object.assign(body, {room: room.name, display_name: room.displayName || ''});
        if (room.hear) body.hear = room.hear;
        if (room.share) body.share = room.share;
        if (room.originalVolume !== undefined) body.original_volume = room.originalVolume;
      }
    }
    const answer = await this._fetchJson('offer', {
      method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body),
    });
    if (this.pc !== pc) throw new ServerError(0, 'closed');
    if (typeof answer.sdp !== 'string') throw new ServerError(200, 'the server sent a malformed answer');
    this.sessionId = answer.session_id || this.sessionId;
    await pc.setRemoteDescription({type: 'answer', sdp: answer.sdp});
    let timer;
    const late = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new ServerError(0, 'no connection to the server (the events channel did not open)')),
        GREETING_MS);
    });
    try {
      await Promise.race([greeted, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  // The current peer connection goes, quietly (its events are no longer heard).
  _dropPeer() {
    const pc = this.pc;
    this.pc = null;
    this._dc = null;
    if (this._greeting) this._greeting.reject(new ServerError(0, 'closed'));
    this._greeting = null;
    if (pc) try { pc.close(); } catch (err) { /* closed already */ }
  }

  _onTrack(track) {
    for (const old of this.remoteStream.getTracks()) {
      if (old.kind === track.kind) this.remoteStream.removeTrack(old);
    }
    this.remoteStream.addTrack(track);
    this._local('track', {track});
  }

  _onConnectionState(pc) {
    if (this.pc !== pc) return;
    const state = pc.connectionState;
    this._local('connection', {state});
    if (state === 'failed' || state === 'closed') this._lost(`connection ${state}`);
    else if (state === 'disconnected') {
      setTimeout(() => {
        if (this.pc === pc && pc.connectionState === 'disconnected') this._lost('connection disconnected');
      }, DISCONNECTED_GRACE_MS);
    }
  }

  _onMessage(data) {
    let event;
    try { event = JSON.parse(data); } catch (err) { return; }
    if (!event || typeof event !== 'object') return;
    if (event.type === 'ready' || event.type === 'resumed') {
      this.sessionId = event.session_id || this.sessionId;
      if (Array.isArray(event.pipelines)) this.pipelines = event.pipelines;
      if (event.type === 'ready') {
        this.ready = event;
        this._resumeToken = event.resume_token || null;
        this._resumeSeconds = Number(event.resume_seconds) || 0;
      }
      this.state = 'connected';
      this._lastPong = performance.now();
      if (this._greeting) this._greeting.resolve();
    } else if (event.type === 'pong') {
      this._lastPong = performance.now();
      const sent = this._pings.get(event.id);
      if (sent !== undefined) {
        this._pings.delete(event.id);
        this.rttMs = Math.round((performance.now() - sent) * 10) / 10;
      }
    }
    this._emit(event);
  }

  // Every PING_MS: a ping, and a check that the connection is still there.
  _tick() {
    if (this.state !== 'connected') return;
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed' || !this._dc || this._dc.readyState !== 'open') {
      this._lost('the connection closed');
    } else if (performance.now() - this._lastPong > PONG_TIMEOUT_MS) {
      this._lost(`no answer from the server for ${PONG_TIMEOUT_MS / 1000} s`);
    } else {
      this._pingId += 1;
      this._pings.set(this._pingId, performance.now());
      for (const id of this._pings.keys()) { // forget pings never answered
        if (this._pings.size <= 16) break;
        this._pings.delete(id);
      }
      this._dc.send(JSON.stringify({type: 'ping', id: this._pingId}));
    }
  }

  // The connection dropped: resume the session on a new one, or end.
  _lost(reason) {
    if (this._closed) return;
    if (this.state !== 'connected') { // while (re)connecting: that attempt failed
      if (this._greeting) this._greeting.reject(new ServerError(0, reason));
      return;
    }
    if (!this._reconnect || !this._resumeToken) {
      this._end(reason);
      return;
    }
    this._resume(reason);
  }

  async _resume(reason) {
    this.state = 'reconnecting';
    const deadline = performance.now() + Math.max(this._resumeSeconds, 1) * 1000;
    for (let attempt = 1; ; attempt++) {
      this._dropPeer();
      if (this._closed) return;
      this._local('reconnecting', {attempt, reason});
      try {
        await this._attach(this._resumeToken);
        return; // the server's "resumed" has been emitted
      } catch (err) {
        if (this._closed) return;
        const final = err.status >= 400 && err.status < 500; // unknown or ended session, refused
        if (final || performance.now() > deadline) {
          this._end(`could not resume the session: ${err.message}`);
          return;
        }
        reason = err.message;
      }
      await new Promise((r) => setTimeout(r, RETRY_MS[Math.min(attempt - 1, RETRY_MS.length - 1)]));
    }
  }

  _end(reason, announce = true) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this._closed = true;
    clearInterval(this._pinger);
    this._dropPeer();
    if (announce) this._local('closed', {reason});
  }
}

function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === 'complete') done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}
