// Rooms on the page (docs/rooms.md): create or join a room, copy its link, the others' video
// tiles with their captions, mute. The session itself is connection.js's; this module gives it
// the `room` option and shows what the room sends (participant events, others' slot tracks).
import {log, errorText, showError} from './ui.js';
import {token} from './auth.js';

const $ = (id) => document.getElementById(id);
const SLOTS = 3; // receive slots offered: up to the server's default --room-size (4) minus oneself

const tiles = new Map(); // participant id -> {figure, video, caption, mids}
const slotTracks = new Map(); // mid -> MediaStream of what that slot carries

// The room option for mms-client.js, or undefined when no room is named.
export function roomOption() {
  const name = $('room-name').value.trim();
  if (!name) return undefined;
  return {name, displayName: $('display-name').value.trim(), slots: SLOTS};
}

function link(name) {
  const url = new URL(location.href);
  url.search = '';
  url.searchParams.set('room', name);
  return url.href;
}

async function createRoom() {
  try {
    const resp = await fetch('/rooms', {method: 'POST', headers: token ? {Authorization: `Bearer ${token}`} : {}});
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    $('room-name').value = body.room;
    history.replaceState(null, '', link(body.room));
    log('info', `room created: share ${link(body.room)}`);
  } catch (err) {
    showError(`Cannot create a room: ${errorText(err)}`);
  }
}

async function copyLink() {
  const name = $('room-name').value.trim();
  if (!name) return;
  try {
    await navigator.clipboard.writeText(link(name));
    log('info', 'room link copied');
  } catch (err) {
    window.prompt('Copy the room link:', link(name)); // no clipboard (plain HTTP): show it
  }
}

// The microphone on or off for the others (and the pipelines).
function toggleMute(stream) {
  const button = $('mute');
  const muted = button.getAttribute('aria-pressed') !== 'true';
  for (const track of stream ? stream.getAudioTracks() : []) track.enabled = !muted;
  button.setAttribute('aria-pressed', String(muted));
  button.textContent = muted ? 'Unmute' : 'Mute';
}

function attach(tile) {
  const video = tile.mids && tile.mids.video ? slotTracks.get(tile.mids.video) : null;
  const audio = tile.mids && tile.mids.audio ? slotTracks.get(tile.mids.audio) : null;
  const stream = new MediaStream([...(video ? video.getTracks() : []), ...(audio ? audio.getTracks() : [])]);
  tile.video.srcObject = stream;
}

// A slot's track arrived (local "slot-track" event of mms-client.js).
export function slotTrack(mid, track) {
  slotTracks.set(mid, new MediaStream([track]));
  for (const tile of tiles.values()) {
    if (tile.mids && (tile.mids.video === mid || tile.mids.audio === mid)) attach(tile);
  }
}

// A room event, or another participant's pipeline event; false for anything else.
export function handleRoomEvent(msg) {
  if (msg.type === 'room') {
    $('room-state').textContent = `in room (up to ${msg.size})`;
    return true;
  }
  if (msg.type === 'participant_joined') {
    let tile = tiles.get(msg.participant);
    if (!tile) {
      const figure = document.createElement('figure');
      figure.className = 'tile';
      figure.dataset.participant = msg.participant;
      const video = document.createElement('video');
      video.autoplay = true;
      video.playsInline = true;
      const name = document.createElement('figcaption');
      const label = document.createElement('span');
      label.className = 'avatar-label';
      label.textContent = 'talking head';
      label.title = 'No camera: the server shows their portrait speaking';
      const caption = document.createElement('div');
      caption.className = 'caption';
      figure.append(video, name, label, caption);
      $('room-tiles').append(figure);
      tile = {figure, video, name, label, caption};
      tiles.set(msg.participant, tile);
    }
    const langs = msg.languages || {};
    tile.name.textContent = `${msg.display_name || 'guest'}${langs.speaks ? ` (${langs.speaks})` : ''}`;
    tile.figure.dataset.avatar = String(Boolean(msg.avatar)); // its video is a stand-in talking head
    tile.label.hidden = !msg.avatar;
    tile.mids = msg.slots || null;
    attach(tile);
    log('info', `${msg.display_name || msg.participant} joined`, msg.t);
    return true;
  }
  if (msg.type === 'participant_left') {
    const tile = tiles.get(msg.participant);
    if (tile) tile.figure.remove();
    tiles.delete(msg.participant);
    log('info', `${msg.display_name || msg.participant} left`, msg.t);
    return true;
  }
  if (msg.participant === undefined) return false;
  const tile = tiles.get(msg.participant);
  if (tile && (msg.type === 'translation' || msg.type === 'transcript')) {
    tile.caption.textContent = msg.text || '';
  } else if (tile && (msg.type === 'gender' || msg.type === 'emotion')) {
    tile.figure.dataset[msg.type] = msg.label;
  }
  return true;
}

export function resetRoom() {
  for (const tile of tiles.values()) tile.figure.remove();
  tiles.clear();
  slotTracks.clear();
  $('room-state').textContent = '';
}

export function wireRoom(currentStream) {
  const name = new URLSearchParams(location.search).get('room');
  if (name) $('room-name').value = name;
  $('room-create').addEventListener('click', createRoom);
  $('room-copy').addEventListener('click', copyLink);
  $('mute').addEventListener('click', () => toggleMute(currentStream()));
}
