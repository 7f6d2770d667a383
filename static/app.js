// The web client: camera + microphone -> WebRTC -> the server's pipelines; results come back on
// the "events" data channel, returned audio/video on the peer connection. Plain ES modules, no
// build step: this entry wires those in js/ together; mms-client.js is the connection itself.
import {showError, clearError, errorText, setState, resetDisplays, updateControls, wireControls} from './js/ui.js';
import {listPipelines, selectedPipelines, changedOptions, confirmOptions} from './js/pipeline-list.js';
import {session, channelOpen, send, start as startSession, stop, localStream} from './js/connection.js';
import {roomOption, slotTrack, handleRoomEvent, resetRoom, wireRoom} from './js/room.js';
import {resetResults} from './js/cards.js';
import {handleEvent} from './js/events.js';
import {loadPipelineUi} from './js/plugins.js';

let health; // the /health answer once loaded; null if it failed, undefined until then
let unsupported = false; // no WebRTC in this browser

function refreshControls() {
  updateControls({
    canStart: health !== undefined && !unsupported, running: session() !== null, channelOpen: channelOpen(),
  });
}

async function loadPipelines() {
  health = await listPipelines();
  if (health) await Promise.all(Object.keys(health.pipelines || {}).map(loadPipelineUi));
  refreshControls();
}

async function start() {
  if (session()) return;
  clearError();
  const names = health ? selectedPipelines() : null; // null: let the server use its defaults
  let options = {};
  try {
    options = names ? changedOptions(names) : {};
  } catch (err) {
    showError(errorText(err));
    return;
  }
  confirmOptions();
  resetDisplays();
  resetResults(names || []);
  setState('media');
  resetRoom();
  const started = startSession(names, options, {
    onChange: refreshControls, room: roomOption(), onSlotTrack: slotTrack,
    onEvent: (event) => { if (!handleRoomEvent(event)) handleEvent(event); },
  });
  refreshControls();
  await started;
}

wireControls({start, stop: () => stop('stopped'), send});
wireRoom(localStream);
// Close the connection when the page goes away, so the server frees the session at once.
window.addEventListener('pagehide', () => stop());

if (!window.RTCPeerConnection) {
  unsupported = true;
  showError('This browser does not support WebRTC.');
}
refreshControls();
if (window.RTCPeerConnection) loadPipelines();
