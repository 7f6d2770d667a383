// UI of the gender pipeline: the label with its probability, and a bar of P(female).
export default function setup(mms) {
  mms.renderers.gender = (msg) => {
    const box = mms.card('gender');
    const value = box.querySelector('.value');
    delete value.dataset.waiting;
    value.dataset.label = msg.label;
    value.textContent = `${msg.label} ${mms.percent(msg.score)}`;
    const meter = box.querySelector('.meter');
    meter.hidden = false;
    // The bar shows P(female): full left = female, full right = male.
    const pFemale = msg.label === 'female' ? msg.score : 1 - msg.score;
    meter.firstElementChild.style.width = `${Math.max(0, Math.min(1, pFemale)) * 100}%`;
    meter.title = `P(female) ${mms.percent(pFemale)}`;
    const parts = [];
    if (msg.f0_hz) parts.push(`pitch ${msg.f0_hz} Hz`);
    if (msg.speech_seconds !== undefined) parts.push(`${msg.speech_seconds}s speech`);
    if (msg.latency_ms !== undefined) parts.push(`${msg.latency_ms} ms`);
    if (msg.backend) parts.push(msg.backend);
    box.querySelector('.detail').textContent = parts.join(' · ');
    box.querySelector('.card-error').hidden = true;
    return `gender ${msg.label} ${mms.percent(msg.score)}` +
        (msg.f0_hz ? ` f0 ${msg.f0_hz} Hz` : '') + (msg.backend ? ` (${msg.backend})` : '');
  };
}
