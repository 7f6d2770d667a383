// UI of the translation pipeline: a source/target picker with a swap button (before Start they
// set the session's options; during a session they send one `config` message with both
// languages, so a swap never passes through an invalid pair), and live captions of both
// languages: committed words in full colour, words still being recognised greyed out.
// The translated speech plays on the page's remote audio element; the page keeps the
// microphone's echo cancellation on so the translated voice is not translated again.

export default function setup(mms) {
  const entry = mms.controls('translation');
  let pairs = [];
  let sourceSelect = null;
  let targetSelect = null;

  const optionInput = (key) => entry && entry.querySelector(`input.option-input[data-key="${key}"]`);

  function setOption(key, value) {
    const input = optionInput(key);
    if (input) input.value = value; // picked up as a changed option at Start
  }

  function applyPair(source, target) {
    setOption('source', source);
    setOption('target', target);
    const session = mms.session();
    if (session && session.pipelines.includes('translation')) {
      mms.send({type: 'config', pipeline: 'translation', options: {source, target}});
      mms.log('info', `translation: ${source} → ${target}`);
    }
  }

  function fill(select, values, chosen) {
    select.innerHTML = '';
    for (const value of values) {
      const option = document.createElement('option');
      option.value = option.textContent = value;
      select.append(option);
    }
    if (values.includes(chosen)) select.value = chosen;
  }

  function targetsFor(source) {
    return pairs.filter((p) => p.source === source).map((p) => p.target);
  }

  function refreshTargets() {
    const targets = targetsFor(sourceSelect.value);
    fill(targetSelect, targets, targetSelect.value || (optionInput('target') || {}).value);
  }

  async function buildPicker() {
    if (!entry) return;
    try {
      const response = await mms.fetch('/languages');
      pairs = (await response.json()).pairs || [];
    } catch (err) {
      mms.log('error', `translation: cannot list languages: ${err}`);
      return;
    }
    const row = document.createElement('div');
    row.className = 'translation-picker';
    row.style.cssText = 'display:flex;gap:6px;align-items:center;margin:4px 0 0 24px';
    sourceSelect = document.createElement('select');
    sourceSelect.id = 'translation-source-lang';
    sourceSelect.title = 'language spoken';
    targetSelect = document.createElement('select');
    targetSelect.id = 'translation-target-lang';
    targetSelect.title = 'language heard back';
    const swap = document.createElement('button');
    swap.type = 'button';
    swap.id = 'translation-swap';
    swap.textContent = '⇄';
    swap.title = 'swap languages';
    const sources = [...new Set(pairs.map((p) => p.source))].sort();
    fill(sourceSelect, sources, (optionInput('source') || {}).value || 'en');
    refreshTargets();
    sourceSelect.addEventListener('change', () => {
      refreshTargets();
      applyPair(sourceSelect.value, targetSelect.value);
    });
    targetSelect.addEventListener('change', () => applyPair(sourceSelect.value, targetSelect.value));
    swap.addEventListener('click', () => {
      const source = targetSelect.value;
      const target = sourceSelect.value;
      if (!pairs.some((p) => p.source === source && p.target === target)) {
        mms.log('error', `translation: ${source} → ${target} is not available`);
        return;
      }
      sourceSelect.value = source;
      refreshTargets();
      targetSelect.value = target;
      applyPair(source, target);
    });
    row.append(sourceSelect, swap, targetSelect);
    entry.append(row);
  }

  // The card (re)created at each session start: two caption lines.
  mms.cardSetup.translation = (box) => {
    const captions = document.createElement('div');
    captions.className = 'translation-captions';
    captions.style.cssText = 'margin-top:6px;font-size:15px;line-height:1.4';
    for (const id of ['translation-source', 'translation-target']) {
      const line = document.createElement('p');
      line.id = id;
      line.style.margin = '2px 0';
      const lang = document.createElement('b');
      const committed = document.createElement('span');
      committed.className = 'committed';
      const tentative = document.createElement('span');
      tentative.className = 'tentative';
      tentative.style.opacity = '0.5';
      line.append(lang, committed, tentative);
      captions.append(line);
    }
    box.querySelector('.value').after(captions);
  };

  function caption(id, language, committed, tentative, final) {
    const box = mms.card('translation');
    const value = box.querySelector('.value');
    value.hidden = true;
    const line = box.querySelector(`#${id}`);
    if (!line) return;
    line.children[0].textContent = `${language}: `;
    line.children[1].textContent = committed; // textContent: model output is never parsed as HTML
    line.children[2].textContent = tentative ? ` ${tentative}` : '';
    line.dataset.final = final ? 'true' : 'false';
    line.dataset.text = committed;
    box.querySelector('.card-error').hidden = true;
  }

  mms.renderers.transcript = (msg) => {
    const committed = msg.final ? msg.text : (msg.committed || '');
    const tentative = msg.final ? '' : msg.text.slice(committed.length).trim();
    caption('translation-source', msg.language, committed, tentative, msg.final);
    return `transcript${msg.final ? '' : ' (partial)'} [${msg.language}] ${msg.text}`;
  };

  mms.renderers.translation = (msg) => {
    caption('translation-target', msg.target_lang, msg.text, '', msg.final);
    const box = mms.card('translation');
    const parts = [];
    if (msg.latency_ms !== undefined) parts.push(`${Math.round(msg.latency_ms)} ms after speech`);
    for (const [stage, ms] of Object.entries(msg.timings_ms || {})) parts.push(`${stage} ${Math.round(ms)} ms`);
    box.querySelector('.detail').textContent = parts.join(' · ');
    return `translation [${msg.source_lang}→${msg.target_lang}] ${msg.text}`;
  };

  buildPicker();
}
