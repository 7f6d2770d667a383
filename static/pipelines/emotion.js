// UI of the emotion pipeline: the fused label, a bar per modality (face, voice, words), the
// CBT-style response, and a crisis banner when the words contain crisis language.
// Typed text goes through the page's text box (a data-channel "text" message).
const MODALITIES = ['face', 'voice', 'text'];
const NAMES = {face: 'face', voice: 'voice', text: 'words'};

const STYLE = `
.emotion-rows { display: grid; grid-template-columns: 3.5em 5.5em 1fr; gap: 4px 8px; align-items: center;
  font-size: 13px; margin: 6px 0; }
.emotion-rows .bar { height: 6px; border-radius: 3px; background: rgba(127,127,127,.25); overflow: hidden; }
.emotion-rows .bar span { display: block; height: 100%; width: 0; background: #4c9be8; transition: width .3s ease; }
.emotion-rows [data-absent] { opacity: .45; }
.emotion-response { font-size: 14px; line-height: 1.4; margin: 6px 0 2px; }
.emotion-crisis { border: 2px solid #d9534f; background: rgba(217,83,79,.12); border-radius: 6px; padding: 8px 10px;
  margin: 6px 0; font-size: 14px; line-height: 1.4; }
.emotion-crisis strong { display: block; margin-bottom: 4px; }
`;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export default function setup(mms) {
  if (!document.getElementById('emotion-style')) {
    const style = el('style');
    style.id = 'emotion-style';
    style.textContent = STYLE;
    document.head.append(style);
  }

  mms.cardSetup.emotion = (box) => {
    const crisis = el('div', 'emotion-crisis');
    crisis.id = 'emotion-crisis';
    crisis.setAttribute('role', 'alert');
    crisis.hidden = true;
    const rows = el('div', 'emotion-rows');
    rows.id = 'emotion-modalities';
    for (const name of MODALITIES) {
      const label = el('span', 'modality-label', '–');
      label.id = `emotion-${name}-label`;
      const bar = el('div', 'bar');
      bar.id = `emotion-${name}-bar`;
      bar.append(el('span'));
      const title = el('span', 'modality-name', NAMES[name]);
      for (const part of [title, label, bar]) part.dataset.modality = name;
      rows.append(title, label, bar);
    }
    const response = el('p', 'emotion-response');
    response.id = 'emotion-response';
    box.querySelector('.detail').before(crisis, rows, response);
  };

  mms.renderers.emotion = (msg) => {
    const box = mms.card('emotion');
    const value = box.querySelector('.value');
    delete value.dataset.waiting;
    value.dataset.label = msg.label;
    value.textContent = `${msg.label} ${mms.percent(msg.score)}`;

    for (const name of MODALITIES) {
      const info = msg.modalities && msg.modalities[name];
      const label = box.querySelector(`#emotion-${name}-label`);
      const bar = box.querySelector(`#emotion-${name}-bar`);
      for (const part of box.querySelectorAll(`[data-modality="${name}"]`)) {
        if (info) delete part.dataset.absent; else part.dataset.absent = '';
      }
      if (!info) {
        label.textContent = '–';
        bar.firstElementChild.style.width = '0';
        bar.title = `${NAMES[name]}: not present`;
        continue;
      }
      label.textContent = `${info.label} ${mms.percent(info.score)}`;
      bar.firstElementChild.style.width = `${Math.max(0, Math.min(1, info.score)) * 100}%`;
      const notes = [`weight ${mms.percent(info.weight)}`];
      if (info.heuristic) notes.push(`heuristic: arousal ${info.arousal}, valence ${info.valence}`);
      if (info.source) notes.push(`${info.source}: "${info.text}"`);
      bar.title = `${NAMES[name]}: ${notes.join(' · ')}`;
    }

    const crisis = box.querySelector('#emotion-crisis');
    const response = box.querySelector('#emotion-response');
    if (msg.flag === 'crisis') {
      crisis.replaceChildren(el('strong', '', 'You are not alone. Please reach out for support now.'),
        document.createTextNode(msg.response));
      crisis.hidden = false;
      response.textContent = '';
    } else {
      crisis.hidden = true;
      response.textContent = msg.response || '';
    }
    const present = MODALITIES.filter((m) => msg.modalities && msg.modalities[m]).map((m) => NAMES[m]);
    box.querySelector('.detail').textContent = `from ${present.join(' + ') || 'nothing'} · ${msg.fusion}`;
    box.querySelector('.card-error').hidden = true;
    return `emotion ${msg.label} ${mms.percent(msg.score)}` + (msg.flag ? ` [${msg.flag}]` : '');
  };
}
