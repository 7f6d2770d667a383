// UI of the commentary pipeline: the model's comments as a scrolling chat, newest at the bottom.
const MAX_COMMENTS = 100; // older comments scroll away for good

export default function setup(mms) {
  // The result card (re)created at each session start gets an empty chat list.
  mms.cardSetup.commentary = (box) => {
    const chat = document.createElement('ol');
    chat.className = 'commentary-chat';
    chat.setAttribute('aria-live', 'polite');
    Object.assign(chat.style, {
      listStyle: 'none', margin: '6px 0 0', padding: '0', maxHeight: '240px', overflowY: 'auto',
      fontSize: '14px', lineHeight: '1.45',
    });
    box.querySelector('.value').after(chat);
  };

  mms.renderers.comment = (msg) => {
    const box = mms.card('commentary');
    const value = box.querySelector('.value');
    value.hidden = true; // "waiting…" until the first comment; the chat says the rest
    const chat = box.querySelector('.commentary-chat');
    // Follow new comments unless the reader scrolled up to read older ones.
    const atBottom = chat.scrollTop + chat.clientHeight >= chat.scrollHeight - 8;
    const line = document.createElement('li');
    const who = document.createElement('span');
    who.textContent = 'chatbot: ';
    who.style.fontWeight = '700';
    who.style.color = '#9147ff';
    const text = document.createElement('span');
    text.textContent = msg.text; // textContent: model output is never parsed as HTML
    line.append(who, text);
    if (msg.t !== undefined) line.title = `t=${Number(msg.t).toFixed(1)} s`;
    chat.append(line);
    while (chat.childElementCount > MAX_COMMENTS) chat.firstElementChild.remove();
    if (atBottom) chat.scrollTop = chat.scrollHeight;
    const parts = [`${chat.childElementCount} comment${chat.childElementCount === 1 ? '' : 's'}`];
    if (msg.latency_ms !== undefined) parts.push(`${msg.latency_ms} ms`);
    box.querySelector('.detail').textContent = parts.join(' · ');
    box.querySelector('.card-error').hidden = true;
    return `comment: ${msg.text}`;
  };
}
