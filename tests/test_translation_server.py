"""Translation over WebRTC: an aiortc client and the page in headless Chromium speak English and
get Spanish back, as captions and as audio that, transcribed again, is Spanish."""
from __future__ import annotations

import asyncio
import re

import numpy as np
from av import AudioResampler

from client import ArrayAudioTrack, StreamClient
from pipelines.translation.models import TranslationModels
from server.config import Settings
from testing.browser import assert_no_page_errors, chromium_page, pattern_y4m, wait_sessions
from testing.media import espeak, load_audio
from testing.net import LOOPBACK, assert_loopback, server_pair
from testing.translation import EN_TEXT, SPANISH_WORDS, words


def spanish_words_heard(samples_16k: np.ndarray) -> set[str]:
    heard = TranslationModels(Settings().translation).asr("es").transcribe(samples_16k, "es").text
    return set(words(heard)) & SPANISH_WORDS


async def test_webrtc_english_to_spanish(media_server):
    speech = load_audio(espeak("en-us", EN_TEXT))
    audio = np.concatenate([np.zeros(8000, np.float32), speech])
    client = StreamClient(media_server.url, pipelines=["translation"],
                          options={"translation": {"source": "en", "target": "es"}})
    client.keep_frames = 1500  # 30 s of returned 20 ms audio frames
    try:
        await client.connect(audio=ArrayAudioTrack(audio, 16000))
        assert "a=ptime" not in client.answer_sdp  # speech acted on at once: 20 ms packets, the default
        finals = []
        while not any({"café", "agua", "taza", "vaso"} & set(words(e["text"])) for e in finals):
            event = await client.next_event("translation", timeout=60)
            assert event["source_lang"] == "en" and event["target_lang"] == "es"
            finals.append(event)
        transcript_seen = [e for e in finals if e["source_text"]]
        assert transcript_seen and {"asr", "mt", "tts"} <= set(finals[-1]["timings_ms"])
        assert_loopback(client.selected_pair())
        (session,) = media_server.server.sessions.values()
        local, remote = server_pair(session)
        assert local[0] == LOOPBACK and remote[0] == LOOPBACK

        # Let the queued speech play out, then transcribe what came back over the audio track.
        await asyncio.sleep(session.audio_out.queued_seconds + 0.5)
        resampler = AudioResampler(format="flt", layout="mono", rate=16000)
        returned = np.concatenate([f.to_ndarray().reshape(-1) for _, frame in client.received["audio"]
                                   for f in resampler.resample(frame)])
        voiced = np.abs(returned) > 0.01
        assert voiced.sum() > 16000 * 0.5, "no translated speech arrived"
        assert len(spanish_words_heard(returned)) >= 3

        # Swap mid-session with one config message; a bad pair is refused, the session carries on.
        client.send({"type": "config", "pipeline": "translation", "options": {"source": "es", "target": "en"}})
        config = await client.next_event("config")
        assert config["options"]["source"] == "es" and config["options"]["target"] == "en"
        client.send({"type": "config", "pipeline": "translation", "options": {"target": "tlh"}})
        error = await client.next_event("error")
        assert "available pairs" in error["message"] and "en->es" in error["message"]
        assert session.pipelines["translation"].options["target"] == "en"
    finally:
        await client.close()


async def record_remote_audio(page, seconds: float) -> np.ndarray:
    """What the page's <audio id=remote-audio> plays, captured with Web Audio for ``seconds``."""
    samples = await page.evaluate("""async (seconds) => {
        const stream = document.getElementById('remote-audio').srcObject;
        const ctx = new AudioContext({sampleRate: 16000});
        const source = ctx.createMediaStreamSource(stream);
        const node = ctx.createScriptProcessor(4096, 1, 1);
        const chunks = [];
        node.onaudioprocess = (e) => chunks.push(Array.from(e.inputBuffer.getChannelData(0)));
        source.connect(node); node.connect(ctx.destination);
        await new Promise((r) => setTimeout(r, seconds * 1000));
        node.disconnect(); await ctx.close();
        return chunks.flat();
    }""", seconds)
    return np.asarray(samples, dtype=np.float32)


async def test_page_translates_speech(media_server, tmp_path):
    wav = espeak("en-us", EN_TEXT)
    y4m = pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path, wav, y4m) as page:
        await page.goto(media_server.url)
        await page.wait_for_selector("#pipeline-translation")
        await page.wait_for_selector("#translation-target-lang option[value='es']", state="attached")
        await page.uncheck("#pipeline-gender")
        await page.check("#pipeline-translation")
        assert await page.input_value("#translation-source-lang") == "en"
        await page.select_option("#translation-target-lang", "es")
        await page.click("#start")
        # Read the source caption in the same frame as the final translation: the fake microphone
        # loops the file, so the next utterance's transcript replaces it soon after.
        source = await (await page.wait_for_function(
            "(() => { const t = document.querySelector('#translation-target');"
            " return t && t.dataset.final === 'true' && /café|agua|vaso|taza/.test(t.dataset.text)"
            " && document.querySelector('#translation-source').textContent; })()",
            timeout=90_000)).json_value()
        # The English caption of the speech (the looping microphone may already be on the next
        # sentence, "Good morning.", while the target still shows the coffee sentence's translation).
        assert source.startswith("en:") and re.search(r"coffee|water|glass|cup|please|good morning", source.lower()), source
        # Chromium's fake microphone loops the file: the next utterances come back as audio too.
        audio = await record_remote_audio(page, 8.0)
        assert (np.abs(audio) > 0.01).sum() > 16000 * 0.5, "the page played no translated speech"
        assert len(spanish_words_heard(audio)) >= 2

        stats = await page.evaluate("window.mmsStats")
        assert stats["selectedPair"]["local"]["address"] == LOOPBACK
        assert stats["selectedPair"]["remote"]["address"] == LOOPBACK
        (session,) = media_server.server.sessions.values()
        local, remote = server_pair(session)
        assert local[0] == LOOPBACK and remote[0] == LOOPBACK

        # The swap button sends one config message with both languages.
        await page.click("#translation-swap")
        await page.wait_for_function(
            "document.querySelector('#log').textContent.includes('config translation')", timeout=10_000)
        assert session.pipelines["translation"].options["source"] == "es"
        assert session.pipelines["translation"].options["target"] == "en"
        await page.click("#stop")
        await wait_sessions(media_server.server, 0, timeout=5)
        assert_no_page_errors(page)
