// UI of the talking_head pipeline: upload a portrait and choose what drives the lips, before Start
// or during a session (changes go out as "config" messages). The avatar is the returned video.
// ?avatar_session=ID opens an avatar session driven over the REST API.
export default function setup(mms) {
  const entry = mms.controls('talking_head');
  if (!entry) return;
  const option = (key) => entry.querySelector(`input.option-input[data-key="${key}"]`);
  const setOption = (key, value) => {
    const input = option(key);
    if (!input || input.value === value) return;
    input.value = value;
    input.dispatchEvent(new Event('change')); // applied at once if a session runs
  };

  const box = document.createElement('div');
  box.className = 'talking-head-controls';
  box.innerHTML = `
    <label class="option"><span>portrait</span>
      <input id="th-portrait-file" type="file" accept="image/*"></label>
    <div class="muted small" id="th-portrait-status">default: NASA portrait (public domain)</div>
    <img id="th-portrait-preview" alt="" hidden style="max-width:96px;max-height:96px;border-radius:4px">
    <label class="option"><span>lips follow</span>
      <select id="th-drive" style="min-width:0;max-width:100%">
        <option value="mic">my voice</option>
        <option value="translation">the translation</option>
        <option value="api">REST avatar session</option>
      </select></label>`;
  entry.append(box);
  const file = box.querySelector('#th-portrait-file');
  const status = box.querySelector('#th-portrait-status');
  const preview = box.querySelector('#th-portrait-preview');
  const drive = box.querySelector('#th-drive');

  drive.value = option('drive') ? option('drive').value : 'mic';
  drive.addEventListener('change', () => setOption('drive', drive.value));

  file.addEventListener('change', async () => {
    const image = file.files && file.files[0];
    if (!image) return;
    status.textContent = 'analysing…';
    status.dataset.state = 'busy';
    const form = new FormData();
    form.append('image', image, image.name);
    try {
      const resp = await mms.fetch('/api/portraits', {method: 'POST', body: form});
      const body = await resp.json().catch(() => ({error: `HTTP ${resp.status}`}));
      if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
      setOption('portrait', body.portrait_id);
      preview.src = URL.createObjectURL(image);
      preview.hidden = false;
      status.textContent = `${image.name}: ${body.width}×${body.height}, face found`;
      status.dataset.state = 'ok';
      mms.log('info', `portrait ${body.portrait_id} uploaded (${body.analysis_ms} ms to analyse)`);
    } catch (err) {
      status.textContent = `${image.name}: ${err.message}`;
      status.dataset.state = 'error';
      mms.log('error', `portrait upload: ${err.message}`);
    }
  });

  // Opened as a viewer of a REST avatar session: select the pipeline, drive "api", that session.
  const sessionId = new URLSearchParams(window.location.search).get('avatar_session');
  if (sessionId) {
    const checkbox = entry.querySelector('input.pipeline');
    if (checkbox && !checkbox.checked) {
      checkbox.checked = true;
      checkbox.dispatchEvent(new Event('change', {bubbles: true}));
    }
    setOption('avatar_session', sessionId);
    setOption('drive', 'api');
    drive.value = 'api';
    status.textContent = `avatar session ${sessionId.slice(0, 8)}…: its portrait`;
  }

  mms.renderers.talking_head = (msg) => {
    const card = mms.card('talking_head');
    const value = card.querySelector('.value');
    delete value.dataset.waiting;
    value.dataset.state = msg.state;
    if (msg.state === 'closed') {
      value.textContent = 'avatar session closed';
      return `talking_head: avatar session ${msg.avatar_session} closed`;
    }
    value.textContent = `speaking (${msg.drive})`;
    card.querySelector('.detail').textContent =
        `portrait ${msg.portrait_id} · ${msg.width}×${msg.height}` +
        (msg.avatar_session ? ` · avatar session ${msg.avatar_session.slice(0, 8)}` : '');
    card.querySelector('.card-error').hidden = true;
    return `talking_head: portrait ${msg.portrait_id}, lips follow ${msg.drive}`;
  };
}
