"""The gender pipeline's parts: YIN pitch tracking, the silero VAD wrapper, the pitch and
wav2vec2 backends, the shared Batcher, and the pipeline's option checks."""
from __future__ import annotations

import asyncio
import random
import threading

import numpy as np
import pytest

from pipelines.base import OptionError
from pipelines.gender.pipeline import GenderPipeline, PitchGender, PitchUpdate, make_backend
from pipelines.common.pitch import PitchTrack, yin
from pipelines.common.vad import CHUNK, SileroVAD
from inference import Batcher, Overloaded
from testing.media import espeak, flite, load_audio

SR = 16000


def harmonic(f0: float, seconds: float = 1.0, amps=(1.0, 0.6, 0.4, 0.3, 0.2, 0.1), seed: int = 0,
             level: float = 0.3) -> np.ndarray:
    """A voiced-like tone: harmonics of ``f0`` with random phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi))
            for k, a in enumerate(amps) if f0 * (k + 1) < SR / 2)
    return (level * x / sum(amps)).astype(np.float32)


def voiced_f0(x: np.ndarray) -> np.ndarray:
    f0, aperiodicity = yin(x, SR)
    return f0[(f0 > 0) & (aperiodicity < 0.2)]


# ------------------------------------------------------------------------------------------------
# YIN

@pytest.mark.parametrize("f0", [65, 90, 130, 200, 280, 380])
def test_yin_finds_f0_of_harmonic_signals(f0):
    x = harmonic(f0, seed=f0)
    x = x + np.random.default_rng(1).normal(0, 0.003, len(x)).astype(np.float32)  # ~30 dB SNR
    frames, _ = yin(x, SR)
    voiced = voiced_f0(x)
    assert len(voiced) >= 0.95 * len(frames)
    assert abs(np.median(voiced) / f0 - 1) < 0.02
    assert np.all(np.abs(voiced / f0 - 1) < 0.02)  # no octave errors in any frame


@pytest.mark.parametrize("amps", [(0.2, 1.0, 0.5, 0.3), (0.0, 1.0, 0.5, 0.3)], ids=["weak", "missing"])
def test_yin_weak_or_missing_fundamental_is_not_an_octave_up(amps):
    voiced = voiced_f0(harmonic(130, amps=amps))
    assert len(voiced) > 80
    assert np.all(np.abs(voiced / 130 - 1) < 0.02)


def test_yin_follows_a_glide():
    t = np.arange(2 * SR) / SR
    phase = 2 * np.pi * np.cumsum(100 + 75 * t) / SR  # 100 -> 250 Hz in 2 s
    x = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 5))
    f0, _ = yin(x, SR)
    centres = (np.arange(len(f0)) * 160 + 320) / SR  # 40 ms frames, 10 ms hop
    assert np.all(f0 > 0)
    assert np.max(np.abs(f0 / (100 + 75 * centres) - 1)) < 0.02


def test_yin_silence_and_noise_are_unvoiced():
    f0, aperiodicity = yin(np.zeros(SR, dtype=np.float32), SR)
    assert len(f0) > 90 and not f0.any() and np.all(aperiodicity == 1.0)
    rng = np.random.default_rng(0)
    for level in (1e-3, 0.05, 0.5):
        assert len(voiced_f0(rng.normal(0, level, 2 * SR))) == 0


def test_yin_onset_after_digital_silence_gives_no_spurious_pitch():
    # Frames whose integration window is still silent used to report a perfect period at fmax.
    x = np.concatenate([np.zeros(SR // 2, dtype=np.float32), harmonic(130)])
    voiced = voiced_f0(x)
    assert len(voiced) > 90
    assert np.all(np.abs(voiced / 130 - 1) < 0.02)
    # the same with a DC offset in the "silence"
    voiced = voiced_f0(np.concatenate([np.full(SR // 2, 0.01, dtype=np.float32), harmonic(130)]))
    assert np.all(np.abs(voiced / 130 - 1) < 0.02)


def test_pitch_track_computes_each_frame_once_as_yin_would_over_the_stream():
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 4) / 16000
    stream = np.sin(2 * np.pi * (120 + 60 * t) * t) + 0.05 * rng.standard_normal(len(t))
    whole_f0, whole_ap = yin(stream)
    track = PitchTrack(max_seconds=2.5)
    cuts = np.sort(rng.integers(0, len(stream), 30))
    for part in np.split(stream, cuts):  # pieces of any length, some empty or shorter than a frame
        track.push(part)
    f0, ap = track.window(2.0)
    assert len(f0) == 200
    np.testing.assert_allclose(f0, whole_f0[-200:], atol=1e-6)
    np.testing.assert_allclose(ap, whole_ap[-200:], atol=1e-9)
    assert len(track.window(9)[0]) <= 260  # at most max_seconds (and one push) kept
    assert len(PitchTrack().window(3)[0]) == 0


def test_pitch_gender_on_a_track_matches_the_whole_clip():
    speech = load_audio(espeak("en+f3"))[:16000 * 3]
    backend, track = PitchGender(), PitchTrack()
    for part in np.array_split(speech, 7):
        result = backend.predict([PitchUpdate(track, part, 3.0)])[0]
    whole = backend.predict_one(speech)
    assert result.label == whole.label == "female"
    assert abs(result.detail["f0_hz"] - whole.detail["f0_hz"]) < 1


def test_yin_short_input():
    f0, aperiodicity = yin(np.zeros(100, dtype=np.float32), SR)
    assert len(f0) == 0 and len(aperiodicity) == 0


# ------------------------------------------------------------------------------------------------
# Silero VAD

@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """1 s of silence, espeak-ng speech (about 10 s), 1 s of silence."""
    pad = np.zeros(SR, dtype=np.float32)
    return np.concatenate([pad, load_audio(espeak("en")), pad])


def test_vad_speech_and_silence(vad, speech):
    stream = vad.stream()
    probs = np.concatenate([stream(speech[i:i + 1000]) for i in range(0, len(speech), 1000)])
    assert len(probs) == len(speech) // CHUNK
    lead = probs[:SR // CHUNK - 1]  # chunks entirely in the leading second of silence
    tail = probs[-(SR // CHUNK) + 4:]  # the trailing second, after a short hangover
    body = probs[SR // CHUNK + 8:-(SR // CHUNK) - 8]
    assert lead.max() < 0.2 and tail.max() < 0.2
    assert np.mean(body > 0.5) > 0.7 and body.max() > 0.9
    # Chunking of the input does not matter: same as one call with everything.
    whole = vad.stream()(speech)
    np.testing.assert_allclose(probs, whole, atol=1e-5)


def test_vad_streams_are_independent(vad, speech):
    noise = np.random.default_rng(0).normal(0, 0.01, len(speech)).astype(np.float32)
    a, b = vad.stream(), vad.stream()
    out_a, out_b = [], []
    for i in range(0, len(speech), 2048):  # interleaved, as two sessions would be
        out_a.append(a(speech[i:i + 2048]))
        out_b.append(b(noise[i:i + 2048]))
    out_a, out_b = np.concatenate(out_a), np.concatenate(out_b)
    np.testing.assert_allclose(out_a, vad.stream()(speech), atol=1e-5)
    np.testing.assert_allclose(out_b, vad.stream()(noise), atol=1e-5)
    assert out_a.max() > 0.9 and out_b.max() < 0.5  # and they really did see different audio


def test_vad_streams_are_independent_across_threads(vad, speech):
    expected = vad.stream()(speech)
    results: dict[int, np.ndarray] = {}

    def work(k):
        s = vad.stream()
        results[k] = np.concatenate([s(speech[i:i + 4096]) for i in range(0, len(speech), 4096)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        np.testing.assert_allclose(results[k], expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# PitchGender on real voices

@pytest.mark.parametrize("voice,label", [("en", "male"), ("en-us", "male"), ("en+m3", "male"),
                                         ("de", "male"), ("en+f3", "female"), ("en+f4", "female"),
                                         ("en+f2", "female"), ("fr+f2", "female")])
def test_pitch_gender_espeak(voice, label):
    audio = load_audio(espeak(voice))
    result = PitchGender().predict_one(audio)
    assert result.label == label, result
    assert result.score > 0.7, result
    # 3 s windows, as the pipeline classifies them, agree with the whole recording
    windows = [audio[i:i + 3 * SR] for i in range(SR // 2, len(audio) - 3 * SR, SR)]
    assert windows and all(r.label == label for r in PitchGender().predict(windows))


@pytest.mark.parametrize("voice,label", [("slt", "female"), ("awb", "male"), ("rms", "male"),
                                         ("kal", "male")])
def test_pitch_gender_flite(voice, label):
    import subprocess
    listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
    if voice not in listed:
        pytest.skip(f"flite has no voice {voice}")
    result = PitchGender().predict_one(load_audio(flite(voice)))
    assert result.label == label, result
    assert result.score > 0.55, result


def test_pitch_gender_without_voice_is_undecided():
    rng = np.random.default_rng(0)
    for clip in (np.zeros(3 * SR, dtype=np.float32), rng.normal(0, 0.1, 3 * SR).astype(np.float32),
                 np.zeros(100, dtype=np.float32)):
        result = PitchGender().predict_one(clip)
        assert result.score == 0.5
        assert result.detail["voiced_frames"] == 0 and result.detail["f0_hz"] is None


def test_pitch_gender_scale_and_confidence():
    backend = PitchGender()
    low, high, mid = (backend.predict_one(harmonic(f)) for f in (110, 220, 160))
    assert (low.label, high.label) == ("male", "female")
    assert low.score > 0.95 and high.score > 0.95
    assert mid.score < 0.55  # the boundary: no opinion
    assert abs(high.detail["f0_hz"] - 220) < 3
    # Little voiced speech: the same pitch, less confidence.
    short = backend.predict_one(harmonic(220, seconds=0.2))
    assert short.label == "female" and 0.5 < short.score < high.score
    # a batch keeps the order of its clips
    assert [r.label for r in backend.predict([harmonic(220), harmonic(110), harmonic(240)])] == \
        ["female", "male", "female"]


# ------------------------------------------------------------------------------------------------
# Wav2Vec2Gender (a tiny random model saved locally: the same from_pretrained path as a hub id)

def save_tiny_model(path, *, norm: str, id2label: dict[int, str], mask: bool, seed: int = 3):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(32, 32), conv_stride=(5, 5), conv_kernel=(10, 3), num_feat_extract_layers=2,
        feat_extract_norm=norm, do_stable_layer_norm=norm == "layer", num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, classifier_proj_size=16, initializer_range=0.2,
        id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = Wav2Vec2ForSequenceClassification(config).eval()
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=mask)
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return model, extractor


def clips_of_different_lengths() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    specs = [(110, 0.01, 8000), (220, 0.1, 19200), (150, 0.3, 48000), (300, 0.05, 30000), (90, 0.0, 12000)]
    return [harmonic(f, n / SR, seed=int(f)) + rng.normal(0, a, n).astype(np.float32) for f, a, n in specs]


def reference_probabilities(model, extractor, clips, female: int, male: int) -> np.ndarray:
    """P(female), P(male) per clip, one clip at a time (no padding at all)."""
    import torch
    out = []
    with torch.no_grad():
        for clip in clips:
            logits = model(**extractor([clip], sampling_rate=SR, return_tensors="pt")).logits
            out.append(torch.softmax(logits[0, [female, male]], dim=-1).numpy())
    return np.array(out)


@pytest.mark.parametrize("norm,mask,id2label,female,male", [
    # wav2vec2-large style: layer-norm front end, the feature extractor returns attention masks
    ("layer", True, {0: "female", 1: "male"}, 0, 1),
    # wav2vec2-base style: group norm, no attention masks; labels in another order and case, and
    # a third label that only starts like "male"
    ("group", False, {0: "music", 1: "MALE", 2: "Female"}, 2, 1),
])
def test_wav2vec2_backend_batches_clips_of_different_lengths(tmp_path, norm, mask, id2label, female, male):
    model, extractor = save_tiny_model(tmp_path, norm=norm, id2label=id2label, mask=mask)
    backend = make_backend("wav2vec2", str(tmp_path), "cpu")
    clips = clips_of_different_lengths()
    batch = backend.predict(clips)
    single = [backend.predict([clip])[0] for clip in clips]
    reference = reference_probabilities(model, extractor, clips, female, male)

    assert len(batch) == len(clips)
    for got, alone, (pf, pm) in zip(batch, single, reference):
        assert got.label in ("female", "male") and 0.5 <= got.score <= 1.0
        assert got.label == alone.label == ("female" if pf >= pm else "male")
        assert got.score == pytest.approx(alone.score, abs=1e-5)
        assert got.score == pytest.approx(max(pf, pm), abs=1e-5)
    assert len({round(r.score, 3) for r in batch}) > 1  # the model does tell the clips apart

    # Control: the naive batch (zero padding, no attention mask) really would change the results,
    # so the equality above is not vacuous.
    import torch
    inputs = extractor(clips, sampling_rate=SR, padding=True, return_tensors="pt", return_attention_mask=True)
    with torch.no_grad():
        logits = model(input_values=inputs["input_values"]).logits
    naive = torch.softmax(logits[:, [female, male]], dim=-1).numpy()
    assert np.max(np.abs(naive - reference)) > 1e-3


def test_wav2vec2_group_norm_model_with_masks_still_matches_single_clips(tmp_path):
    # A group-norm model whose extractor claims attention masks: padding would still change the
    # group norm's statistics, so the backend must not pad it.
    model, extractor = save_tiny_model(tmp_path, norm="group", id2label={0: "female", 1: "male"}, mask=True)
    backend = make_backend("wav2vec2", str(tmp_path), "cpu")
    clips = clips_of_different_lengths()
    clips.append(clips[0].copy())  # equal lengths share a forward pass
    reference = reference_probabilities(model, extractor, clips, 0, 1)
    for got, (pf, pm) in zip(backend.predict(clips), reference):
        assert got.score == pytest.approx(max(pf, pm), abs=1e-5)
    assert backend.predict([]) == []


def test_wav2vec2_backend_needs_female_and_male_labels(tmp_path):
    save_tiny_model(tmp_path, norm="layer", id2label={0: "LABEL_0", 1: "LABEL_1"}, mask=True)
    with pytest.raises(ValueError, match="need female and male"):
        make_backend("wav2vec2", str(tmp_path), "cpu")


def test_wav2vec2_label_names():
    from pipelines.gender.pipeline import FEMALE_LABELS, MALE_LABELS, _label_index
    labels = {0: "music", 1: "male_voice", 2: "female voice", 3: "noise"}
    assert (_label_index(labels, FEMALE_LABELS), _label_index(labels, MALE_LABELS)) == (2, 1)
    assert _label_index({0: "mixed", 1: "feminine"}, MALE_LABELS) is None
    assert _label_index({0: "woman", 1: "man"}, FEMALE_LABELS) == 0


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown gender backend"):
        make_backend("tea-leaves", "", "cpu")
    assert make_backend("pitch", "", "cpu").name == "pitch"


# ------------------------------------------------------------------------------------------------
# Batcher

class Recorder:
    """A predict function that records its batch sizes (called on the batcher's worker thread)."""

    def __init__(self, fail_on=None, delay: float = 0.0):
        self.batches: list[list] = []
        self.fail_on = fail_on
        self.delay = delay

    def __call__(self, items):
        self.batches.append(list(items))
        if self.delay:
            threading.Event().wait(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("model exploded")
        return [item * 10 for item in items]


async def test_batcher_batches_concurrent_submits():
    predict = Recorder(delay=0.01)
    batcher = Batcher(predict, name="test", max_batch=8, max_wait=0.02)
    try:
        async def caller(i):
            await asyncio.sleep(random.Random(i).uniform(0, 0.05))
            return await batcher.predict(i)

        results = await asyncio.gather(*(caller(i) for i in range(60)))
        assert results == [i * 10 for i in range(60)]  # each caller got its own result
        sizes = [len(b) for b in predict.batches]
        assert sum(sizes) == 60 and max(sizes) <= 8
        assert len(predict.batches) < 30  # really batched, not one call per item
    finally:
        await batcher.close()


async def test_batcher_failure_reaches_only_the_failing_caller_and_it_recovers():
    predict = Recorder(fail_on=3)
    batcher = Batcher(predict, name="test", max_batch=16, max_wait=0.1)
    try:
        results = await asyncio.gather(*(batcher.predict(i) for i in range(6)), return_exceptions=True)
        assert predict.batches[0] == list(range(6))  # all six in the failing batch, then one by one
        assert isinstance(results[3], RuntimeError) and "exploded" in str(results[3])
        assert results[:3] + results[4:] == [0, 10, 20, 40, 50]  # the others got their results
        assert await batcher.predict(5) == 50  # the collector survived
        assert await asyncio.gather(batcher.predict(1), batcher.predict(2)) == [10, 20]
    finally:
        await batcher.close()


async def test_batcher_reports_overload():
    release = threading.Event()
    started = threading.Event()

    def predict(items):
        started.set()
        release.wait(5)
        return list(items)

    batcher = Batcher(predict, name="test", max_batch=1, max_wait=0.0, max_pending=2)
    try:
        first = asyncio.ensure_future(batcher.predict(0))
        while not started.is_set():  # the collector holds item 0 in predict; the queue is empty
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.predict(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.predict(3)
        release.set()
        assert await asyncio.gather(first, *queued) == [0, 1, 2]
    finally:
        release.set()
        await batcher.close()


def test_batcher_belongs_to_one_event_loop():
    """Models belong to one server (its registry), so to one loop: another loop is told so."""
    predict = Recorder()
    batcher = Batcher(predict, name="test", max_batch=8, max_wait=0.01)

    async def use(offset):
        return await asyncio.gather(*(batcher.predict(offset + i) for i in range(5)))

    async def use_and_close(offset):
        try:
            return await use(offset)
        finally:
            await batcher.close()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(use(0)) == [0, 10, 20, 30, 40]
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(use(100))
        assert loop.run_until_complete(use_and_close(100)) == [1000, 1010, 1020, 1030, 1040]
    finally:
        loop.close()


async def test_batcher_skips_cancelled_callers():
    predict = Recorder()
    batcher = Batcher(predict, name="test", max_batch=8, max_wait=0.05)
    try:
        doomed = asyncio.ensure_future(batcher.predict(1))
        kept = asyncio.ensure_future(batcher.predict(2))
        await asyncio.sleep(0)
        doomed.cancel()
        assert await kept == 20
        assert predict.batches == [[2]]
    finally:
        await batcher.close()


# ------------------------------------------------------------------------------------------------
# GenderPipeline options

def test_gender_options_defaults_and_valid_changes():
    pipeline = GenderPipeline(None, {"window": 5, "interval": 0.5})
    assert pipeline.options == {**GenderPipeline.defaults, "window": 5, "interval": 0.5}
    pipeline.configure({"vad_threshold": 0.3, "min_speech": 5})
    assert pipeline.options["vad_threshold"] == 0.3 and pipeline.options["min_speech"] == 5


@pytest.mark.parametrize("options,message", [
    ({"colour": "blue"}, "unknown option"),
    ({"interval": 0.1}, "interval"),
    ({"interval": 31}, "interval"),
    ({"window": 0.4}, "window"),
    ({"window": 11}, "window"),
    ({"min_speech": 0.05}, "min_speech"),
    ({"min_speech": 4.0}, "min_speech"),  # longer than the 3 s window
    ({"window": 1.0, "min_speech": 2.0}, "min_speech"),
    ({"vad_threshold": 0.0}, "vad_threshold"),
    ({"vad_threshold": 0.99}, "vad_threshold"),
    ({"window": "3"}, "number"),
    ({"interval": True}, "number"),
    ({"vad_threshold": None}, "number"),
])
def test_gender_options_rejected(options, message):
    with pytest.raises(OptionError, match=message):
        GenderPipeline(None, options)
    pipeline = GenderPipeline(None)
    with pytest.raises(OptionError, match=message):
        pipeline.configure(options)
    assert pipeline.options == GenderPipeline.defaults  # a rejected change leaves options as they were
