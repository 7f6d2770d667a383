"""Translation pipeline: each stage with the real offline models, the local-agreement policy, the
WebSocket endpoints (both modes, swap, bad input) and the LibriVox recordings through the cascade."""
from __future__ import annotations

import asyncio
import json
import pickle
import re

import aiohttp
import jiwer
import numpy as np
import pytest

from media.audio import to_pcm16
from pipelines.base import OptionError
from pipelines.translation import asr as asr_stage
from pipelines.translation.mt import ApertiumTranslator, MTRequest, apertium_pairs
from pipelines.translation.tts import EspeakTTS, TTSRequest, espeak_languages
from pipelines.translation.languages import available_pairs
from pipelines.translation.models import TranslationModels, asr_spec
from pipelines.translation.pipeline import TranslationPipeline
from pipelines.translation.utterance import agreed_prefix
from server.config import Settings
from testing.media import LIBRIVOX, espeak, load_audio
from testing.net import http_get
from testing.translation import EN_TEXT, SPANISH_WORDS, words, ws_session

ES_TEXT = "Buenos días. Me gustaría comer en el restaurante con mis amigos."


@pytest.fixture(scope="module")
def models():
    return TranslationModels(Settings().translation)


# --- stages ----------------------------------------------------------------------------------------
def test_whisper_base_is_joined_once_and_verified(tmp_path):
    path = asr_stage.whisper_base_path(tmp_path)
    model = path / "model.bin"
    size = model.stat().st_size
    parts = [asr_stage._package_dir(p) / "data" / n for p, n in asr_stage.BASE_PARTS]
    assert size == sum(p.stat().st_size for p in parts)
    assert (path / "model.bin.sha256").read_text() == asr_stage._sha256_file(model)
    assert {"config.json", "tokenizer.json", "vocabulary.json"} <= {p.name for p in path.iterdir()}
    mtime = model.stat().st_mtime_ns
    assert asr_stage.whisper_base_path(tmp_path) == path and model.stat().st_mtime_ns == mtime  # reused
    with open(model, "r+b") as f:  # a torn cache is rebuilt, not loaded
        f.truncate(size // 2)
    asr_stage.whisper_base_path(tmp_path)
    assert model.stat().st_size == size
    assert not [p for p in path.iterdir() if p.suffix == ".tmp"]


def test_asr_tiny_en_and_multilingual_base(models):
    english = load_audio(espeak("en-us", EN_TEXT))
    text = models.asr("en").transcribe(english, "en").text
    assert models.asr("en").name == "tiny.en"
    assert jiwer.wer(" ".join(words(EN_TEXT)), " ".join(words(text))) < 0.35, text
    spanish = load_audio(espeak("es", ES_TEXT))
    base = models.asr("es")
    assert base.name == "base" and base.multilingual
    assert jiwer.wer(" ".join(words(ES_TEXT)), " ".join(words(base.transcribe(spanish, "es").text))) < 0.6  # robotic voice, base model
    to_english = base.transcribe(spanish, "es", task="translate").text  # Whisper's translate task
    assert {"good", "morning", "restaurant", "friends"} & set(words(to_english)), to_english
    with pytest.raises(ValueError, match="English"):
        models.asr("en").transcribe(spanish, "es")


def test_asr_encodes_the_utterance_not_30_s_and_batches(models, monkeypatch):
    """Recognition encodes the longest utterance plus a second (whole seconds, at least 10), not 30 s;
    a batch is one encoder call, each item keeping its own text; a prefix starts the text once;
    audio over 29 s goes through faster-whisper's own loop."""
    asr = models.asr("en")
    where = load_audio(espeak("en-us", "Where is the train station?"))
    thanks = load_audio(espeak("en-us", "Thank you very much for your help."))
    shapes = []
    encode = asr.model.encode
    monkeypatch.setattr(asr.model, "encode", lambda features: shapes.append(features.shape) or encode(features))
    first, second = asr.recognize([asr_stage.Request(where, "en"), asr_stage.Request(thanks, "en")])
    seconds = max(asr_stage.MIN_WINDOW, int(np.ceil(max(len(where), len(thanks)) / 16000 + asr_stage.WINDOW_MARGIN)))
    assert shapes == [(2, 80, 100 * seconds)]
    assert words(first.text) == ["where", "is", "the", "train", "station"], first.text  # once, not looped
    assert {"thank", "help"} <= set(words(second.text)), second.text
    prefixed = asr.transcribe(thanks, "en", prefix="Thank you").text
    assert prefixed.startswith("Thank you") and prefixed.lower().count("thank you") == 1, prefixed
    long = asr.transcribe(np.tile(where, int(np.ceil(31 * 16000 / len(where)))), "en")
    assert shapes[-1][-1] == 3000 and "station" in long.text.lower()


async def test_recognition_is_batched_across_sessions(monkeypatch):
    """Utterances of several sessions that end together go through one recognition call."""
    from inference import ModelRegistry

    settings = Settings()
    registry = ModelRegistry(settings)
    models = TranslationModels(settings.translation, registry=registry)
    asr = models.asr("en")
    calls = []
    recognize = asr.recognize
    monkeypatch.setattr(asr, "recognize", lambda requests: calls.append(len(requests)) or recognize(requests))
    clips = [load_audio(espeak("en-us", text)) for text in ("Good morning.", "Where is the train station?", "Thank you.")]
    try:
        results = await asyncio.gather(*(models.recognize("en", clip) for clip in clips))
    finally:
        await registry.close()
    assert calls == [3]
    assert ["morning" in results[0].text.lower(), "station" in results[1].text.lower(),
            "thank" in results[2].text.lower()] == [True, True, True], [r.text for r in results]


def round_trip(value):
    """What a value is once it has crossed to another process."""
    return pickle.loads(pickle.dumps(value))


def test_asr_spec_builds_the_model_anywhere():
    """The Whisper model's spec (what a Ray replica gets) builds a working batch recogniser;
    requests and results survive pickling."""
    spec = round_trip(asr_spec("tiny.en"))
    assert spec == asr_spec("tiny.en") and spec.method == "recognize"
    where = load_audio(espeak("en-us", "Where is the train station?"))
    request = round_trip(asr_stage.Request(where, "en", prefix="Where"))
    assert np.array_equal(request.samples, where) and request.prefix == "Where"
    (result,) = spec.predictor()([request])
    assert round_trip(result) == result and "station" in result.text.lower(), result


class ReplicaStandIn:
    """In place of ``inference.remote.RayModel``: a model built from its pickled spec, every item
    and result pickled on the way, as with a Ray Serve replica."""

    built: dict = {}

    def __init__(self, name, spec, cluster, **batching):
        self.name = name
        self.batch = round_trip(spec).predictor()
        self.built[name] = spec

    async def predict(self, item):
        (result,) = await asyncio.to_thread(self.batch, [round_trip(item)])
        return round_trip(result)

    async def close(self):
        pass


async def test_remote_stages_are_built_from_specs_subprocess_ones_stay(monkeypatch):
    """With ``--inference ray`` the Whisper model is built from its spec and nothing of it is
    loaded here; Apertium and espeak-ng (no spec) are models of this process, whatever
    ``--remote-models`` says."""
    import inference.remote
    from inference import ModelRegistry
    from inference.batching import Batcher

    monkeypatch.setattr(inference.remote, "RayModel", ReplicaStandIn)
    monkeypatch.setattr(ModelRegistry, "cluster", lambda self: None)
    ReplicaStandIn.built = {}
    settings = Settings()
    settings.inference, settings.remote_models = "ray", ["translation-asr-tiny.en", "translation-espeak"]
    registry = ModelRegistry(settings)
    models = TranslationModels(settings.translation, registry=registry)
    where = load_audio(espeak("en-us", "Where is the train station?"))
    try:
        await asyncio.to_thread(models.warm, "en", "es")  # --preload: deploys, or loads what runs here
        assert list(ReplicaStandIn.built) == ["translation-asr-tiny.en"]
        assert ("en", "es") in models._local["translation-apertium"]._pairs
        heard = await models.recognize("en", where)
        text = await models.translate("The weather is nice.", "en", "es")
        samples, rate = await models.synthesize(text, "es")
    finally:
        await registry.close()
        models.close()
    assert "station" in heard.text.lower(), heard
    assert text == "El tiempo es bueno." and rate == 22050 and len(samples) > rate / 2
    assert list(ReplicaStandIn.built) == ["translation-asr-tiny.en"]
    assert "translation-asr-tiny.en" not in models._local  # not loaded in the media server
    assert {name for name, m in models._models.items() if isinstance(m, Batcher)} == {
        "translation-apertium", "translation-espeak"}
    assert models._local["translation-apertium"]._pairs == {}  # its pipelines stopped with the models
    for item in (MTRequest("Hello.", "en", "es"), TTSRequest("Hola.", "es", "+f3")):  # could cross too
        assert round_trip(item) == item


def test_apertium_one_process_per_pair_sentence_by_sentence():
    pairs = apertium_pairs()
    assert {("en", "es"), ("es", "en"), ("en", "ca"), ("fr", "es")} <= set(pairs)
    translator = ApertiumTranslator("en", "es", pairs[("en", "es")])
    try:
        assert translator.translate("The weather is nice.") == "El tiempo es bueno."
        process = translator._process
        out = translator.translate("I like to read books in the morning.")
        assert "libros" in out and "mañana" in out and out.endswith(".")
        # Stream-format characters are escaped, not interpreted; NULs cannot split the answer.
        assert "$5" in translator.translate("It costs $5 [really] a/b^c.")
        assert translator.translate("one\0two") and translator.translate("   ") == ""
        assert translator._process is process and process.poll() is None  # still the same process
        process.kill()
        process.wait()
        assert translator.translate("Good morning.") and translator._process is not process  # restarted
    finally:
        translator.close()


THANKS = {"es": ("gracias",), "en": ("thank", "grace"), "ca": ("gràcies",), "fr": ("merci",)}  # ca->en: "A lot of graces."


@pytest.mark.parametrize("pair", sorted(apertium_pairs()))
def test_every_listed_apertium_pair_answers_request_after_request(pair):
    """Every pair /languages lists answers, in turn (eng-cat's tagger swallows one of a request's
    NULs: it never answered before the answer's NULs were counted per pipeline)."""
    source, target = pair
    sentence = {"en": "Thank you very much.", "es": "Muchas gracias.", "ca": "Moltes gràcies.",
                "fr": "Merci beaucoup."}[source]
    translator = ApertiumTranslator(source, target, apertium_pairs()[pair])
    try:
        answers = [translator.translate(sentence) for _ in range(3)]
        assert len(set(answers)) == 1 and answers[0], answers
        assert any(word in answers[0].lower() for word in THANKS[target]), answers
    finally:
        translator.close()


def test_espeak_tts_round_trip_is_spanish(models):
    samples, rate = EspeakTTS().synthesize("Buenos días, me gustaría un vaso de agua.", "es")
    assert rate == 22050 and 1.0 < len(samples) / rate < 5 and np.abs(samples).max() > 0.1
    from media.audio import resample
    heard = models.asr("es").transcribe(resample(samples, rate, 16000), "es").text
    assert len(set(words(heard)) & SPANISH_WORDS) >= 3, heard
    assert {"es", "en", "ca", "fr", "de"} <= espeak_languages()
    assert EspeakTTS().voice_for("es", "+f3") == "es+f3"
    assert EspeakTTS().voice_for("es", "es-419") == "es-419"
    assert EspeakTTS().voice_for("en", "es-419") == "en-us"  # after a swap: the new language's voice
    samples, _ = EspeakTTS().synthesize("-v en hola", "es")  # leading dash is text, not a flag
    assert len(samples) > 0


def test_local_agreement_prefix():
    assert agreed_prefix("I would like".split(), "i would, like a".split()) == 3
    assert agreed_prefix("I would".split(), "You would".split()) == 0
    assert agreed_prefix([], "anything".split()) == 0


def test_options_and_language_pairs():
    settings = Settings()
    pairs = available_pairs(settings.translation)
    assert ("en", "es") in pairs and ("es", "en") in pairs and ("fr", "es") in pairs
    assert ("de", "en") in pairs  # Whisper translate: any language into English
    assert ("en", "de") not in pairs  # nothing translates English text to German offline

    class Context:
        pass

    context = Context()
    context.settings = settings
    with pytest.raises(OptionError, match="available pairs: .*en->es"):
        TranslationPipeline(context, {"source": "en", "target": "xx"})
    with pytest.raises(OptionError, match="mode"):
        TranslationPipeline(context, {"mode": "telepathy"})
    with pytest.raises(OptionError, match="voice"):
        TranslationPipeline(context, {"voice": "es; rm -rf /"})
    pipeline = TranslationPipeline(context, {})
    pipeline.configure({"source": "es", "target": "en"})  # swap
    assert pipeline.options["source"] == "es" and pipeline.options["target"] == "en"


# --- WebSocket endpoints ---------------------------------------------------------------------------
async def test_ws_translate_en_to_es(media_server, models):
    english = load_audio(espeak("en-us", EN_TEXT))
    padded = np.concatenate([np.zeros(8000, np.float32), english, np.zeros(16000, np.float32), english])
    audio24 = load_audio(espeak("en-us", EN_TEXT), rate=24000)  # a client at another rate
    events, speech = await ws_session(media_server.url.replace("http", "ws") + "/ws/translate",
                                      {"type": "start_stream", "src_lang": "en", "tgt_lang": "es",
                                       "sample_rate": 16000}, padded)
    finals = [e for e in events if e["type"] == "translation" and e["final"]]
    # Each sentence is an utterance (espeak pauses ~0.4 s between them): two per recording.
    assert len(finals) == 4, events
    for event in finals:
        assert event["source_lang"] == "en" and event["target_lang"] == "es"
        assert {"asr", "mt", "tts"} <= set(event["timings_ms"]) and event["latency_ms"] > 0
    # Same speech, same content: the same words (punctuation may follow the surrounding audio,
    # 'Buenos días!' after silence, 'Buenos días.' after speech).
    assert [words(e["text"]) for e in finals[:2]] == [words(e["text"]) for e in finals[2:]], finals
    assert {"café", "agua", "taza", "vaso"} & set(words(finals[1]["text"])), finals
    assert "buenos" in words(finals[0]["text"])
    transcripts = [e for e in events if e["type"] == "transcript"]
    assert all(e["final"] and e["language"] == "en" for e in transcripts) and len(transcripts) == 4
    heard = models.asr("es").transcribe(speech, "es").text  # the returned audio is Spanish speech
    assert len(set(words(heard)) & SPANISH_WORDS) >= 3, heard

    events, speech = await ws_session(media_server.url.replace("http", "ws") + "/ws/translate",
                                      {"type": "start_stream", "src_lang": "en", "tgt_lang": "es",
                                       "sample_rate": 24000}, audio24, rate=24000)
    assert [e for e in events if e["type"] == "translation"], events
    assert len(speech) > 24000  # returned at the client's rate: > 1 s of speech at 24 kHz


async def test_ws_stream_partials_commit_monotonically(settings, media_server):
    # Partials come at a wall-clock cadence while audio arrives in real time: start once the
    # models are loaded (as with --preload), not while the first utterance waits for them.
    settings.preload = ["translation"]
    await media_server.server.preload()
    english = load_audio(espeak("en-us", EN_TEXT + " " + EN_TEXT, speed=140))
    events, speech = await ws_session(media_server.url.replace("http", "ws") + "/ws/stream",
                                      {"type": "start_stream", "src_lang": "en", "tgt_lang": "es",
                                       "sample_rate": 16000}, english, realtime=True)
    assert events[0]["mode"] == "streaming"
    partials = [e for e in events if e["type"] == "transcript" and not e["final"]]
    assert len(partials) >= 3, events
    for before, after in zip(partials, partials[1:]):  # committed text only grows in an utterance
        if before["utterance"] == after["utterance"]:
            assert after["committed"].startswith(before["committed"]), (before, after)
    translations = [e for e in events if e["type"] == "translation"]
    assert any(not e["final"] for e in translations), [(e["type"], e.get("text"), e.get("committed"), e["final"], e["t"]) for e in events[1:]]
    finals = [e for e in translations if e["final"]]
    assert {"café", "agua", "taza", "vaso"} & {w for e in finals for w in words(e["text"])}, finals
    for final in finals:  # each piece spoken once: the final caption is the pieces, in order
        chunks = [e["chunk"] for e in translations if e["utterance"] == final["utterance"] and e["chunk"]]
        assert " ".join(chunks) == final["text"], (chunks, final)
    assert len(speech) > 16000


async def test_ws_swap_languages_mid_session(media_server):
    spanish = load_audio(espeak("es", ES_TEXT))
    english = load_audio(espeak("en-us", EN_TEXT))
    events = []
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(media_server.url.replace("http", "ws") + "/ws/translate") as ws:
        await ws.send_json({"type": "start_stream", "src_lang": "en", "tgt_lang": "es", "sample_rate": 16000})
        await ws.send_bytes(to_pcm16(np.concatenate([english, np.zeros(12000, np.float32)])).tobytes())
        while not events or events[-1]["type"] != "translation":
            msg = await ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.TEXT:
                events.append(json.loads(msg.data))
        await ws.send_json({"type": "config", "options": {"source": "es", "target": "en"}})
        await ws.send_bytes(to_pcm16(spanish).tobytes())
        await ws.send_json({"type": "stop_stream"})
        while events[-1]["type"] != "stopped":
            msg = await ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.TEXT:
                events.append(json.loads(msg.data))
    config = next(e for e in events if e["type"] == "config")
    assert config["options"]["source"] == "es" and config["options"]["target"] == "en"
    finals = [e for e in events if e["type"] == "translation" and e["final"]]
    targets = [e["target_lang"] for e in finals]
    assert targets == ["es"] * targets.count("es") + ["en"] * targets.count("en") and "en" in targets, finals
    english = {w for e in finals if e["target_lang"] == "en" for w in words(e["text"])}
    assert len({"good", "morning", "restaurant", "friends", "eat"} & english) >= 2, finals


async def test_ws_bad_input(media_server):
    url = media_server.url.replace("http", "ws") + "/ws/translate"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        async def expect_error(needle):
            event = await ws.receive_json(timeout=10)
            assert event["type"] == "error" and needle in event["message"], event

        await ws.send_bytes(b"\0\0" * 100)  # audio before start
        await expect_error("start_stream")
        await ws.send_str("{not json")
        await expect_error("JSON")
        await ws.send_json({"type": "start_stream", "src_lang": "en"})  # malformed start
        await expect_error("tgt_lang")
        await ws.send_json({"type": "start_stream", "src_lang": "en", "tgt_lang": "es", "sample_rate": 12345})
        await expect_error("sample_rate")
        await ws.send_json({"type": "start_stream", "src_lang": "en", "tgt_lang": "klingon"})
        await expect_error("en->es")  # names the available pairs
        await ws.send_json({"type": "dance"})
        await expect_error("unknown message type")
        await ws.send_json({"type": "start_stream", "src_lang": "en", "tgt_lang": "es"})
        assert (await ws.receive_json(timeout=30))["type"] == "started"
        await ws.send_bytes(b"")
        await expect_error("empty")
        await ws.send_bytes(b"\0\0\0")
        await expect_error("even")
        await ws.send_json({"type": "config", "options": {"target": "xx"}})
        await expect_error("available pairs")
        await ws.send_json({"type": "stop_stream"})  # nothing sent: empty audio
        await expect_error("no audio")
        assert (await ws.receive_json(timeout=10))["type"] == "stopped"
        await ws.send_bytes(b"\0\0" * 100)  # audio after stop
        await expect_error("start_stream")
        await ws.send_json({"type": "ping", "id": 7})
        pong = await ws.receive_json(timeout=10)  # still serving
        assert (pong["type"], pong["id"]) == ("pong", 7)


async def test_languages_endpoint(media_server):
    body = await http_get(media_server.url + "/languages")
    health = await http_get(media_server.url + "/health")
    pairs = {(p["source"], p["target"]): p["mt"] for p in body["pairs"]}
    assert pairs[("en", "es")] == "apertium" and pairs[("de", "en")] == "whisper"
    assert "translation" in health["pipelines"]


# --- real recordings -------------------------------------------------------------------------------
def librivox_references() -> dict[str, str]:
    refs = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"(.*)\((\S+)\)\s*$", line)
        if match:
            refs[match.group(2)] = match.group(1).strip().lower()
    return refs


async def test_librivox_recordings_through_the_cascade(media_server):
    refs = librivox_references()
    clips = sorted(LIBRIVOX.glob("*.wav"))[:2]
    audio = np.concatenate([np.concatenate([load_audio(c), np.zeros(12000, np.float32)]) for c in clips])
    events, speech = await ws_session(media_server.url.replace("http", "ws") + "/ws/translate",
                                      {"type": "start_stream", "src_lang": "en", "tgt_lang": "es",
                                       "sample_rate": 16000}, audio)
    heard = " ".join(e["text"] for e in events if e["type"] == "transcript")
    reference = " ".join(refs[c.stem] for c in clips)
    error = jiwer.wer(" ".join(words(reference)), " ".join(words(heard)))
    assert error < 0.3, (error, heard, reference)
    translated = " ".join(e["text"] for e in events if e["type"] == "translation")
    assert len(words(translated)) > 10 and len(speech) > 16000 * 3
