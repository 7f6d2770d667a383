// Media: the camera and microphone (with fallbacks) and their preview, the server's returned
// audio and video, and what getStats() tells (frames decoded, audio packets, the ICE path).
import {el, stats, log, errorText} from './ui.js';

const ECHO = {echoCancellation: true, noiseSuppression: true};

// Camera and microphone, else either one, else null (receive only).
export async function getLocalMedia() {
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

// The session's local stream (run.stream, may be null) in the preview; a warning if a track ends.
export function showLocalMedia(run) {
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
}

// A track the server sends back: video to the "Returned" video, audio to the audio element.
export function showRemoteTrack(track) {
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

export function stopTracks(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

// The session is over: release the camera and microphone, blank both videos.
export function clearMedia(stream) {
  stopTracks(stream);
  el.localVideo.srcObject = null;
  el.remoteVideo.srcObject = null;
  el.remoteAudio.srcObject = null;
  el.localNote.textContent = '';
  el.localFigure.dataset.empty = 'camera off';
  el.remoteFigure.dataset.empty = 'not connected';
}

function describeCandidate(c) {
  if (!c) return null;
  return {
    address: c.address || c.ip || null, port: c.port, type: c.candidateType,
    protocol: c.protocol, networkType: c.networkType,
  };
}

// Reads the session's peer connection's stats into window.mmsStats and the top bar; `final`: the
// last time, at teardown.
export async function pollStats(run, final = false) {
  const pc = run.client && run.client.pc;
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
    if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === 'video') {
      frames += s.framesDecoded || 0;
      if (s.frameWidth) stats.videoSize = `${s.frameWidth}x${s.frameHeight}`;
    }
    if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === 'audio') audioPackets += s.packetsReceived || 0;
    if (s.type === 'outbound-rtp' && (s.kind || s.mediaType) === 'video' && s.targetBitrate !== undefined) {
      stats.cameraTargetBitrate = s.targetBitrate;
    }
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
