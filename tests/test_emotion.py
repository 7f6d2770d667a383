"""The emotion pipeline's parts: face expression on the astronaut photo, words (MiniLM + VADER),
crisis language, prosody, confidence-weighted fusion with modalities missing, smoothing, CBT
responses, the trainable fusion network and its training command."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from pipelines.base import OptionError
from pipelines.emotion.pipeline import EmotionPipeline
from pipelines.emotion import fusion_net
from pipelines.emotion.cbt import CRISIS, Responder
from pipelines.emotion.face_expression import FER_LABELS, FerExpression
from pipelines.emotion.fusion import (INDEX, LABELS, Estimate, LabelHysteresis, Smoother, canonical_label,
                                     fuse, label_map, project)
from pipelines.emotion.prosody import MfccExtractor, ProsodyBaseline, prosody_features
from pipelines.emotion.text_emotion import PrototypeTextEmotion, crisis_terms
from testing.images import astronaut
from testing.media import espeak, load_audio

SR = 16000


def onehot(label: str, strength: float = 0.9) -> np.ndarray:
    p = np.full(len(LABELS), (1 - strength) / (len(LABELS) - 1))
    p[INDEX[label]] = strength
    return p


# ------------------------------------------------------------------------------------------------
# Face

@pytest.fixture(scope="module")
def fer() -> FerExpression:
    return FerExpression()


def test_fer_model_contract(fer):
    assert (fer.height, fer.width) == (64, 64) and list(fer.output["shape"]) == [1, 7]
    # FER's output order mapped onto ours: index 3 of the model is happy, 6 neutral
    probs, covers = project(np.eye(7)[3], fer.mapping)
    assert LABELS[int(np.argmax(probs))] == "happy" and covers.all()
    assert LABELS[int(np.argmax(project(np.eye(7)[6], fer.mapping)[0]))] == "neutral"
    assert FER_LABELS[0] == "angry"


def test_astronaut_photo_is_happy(fer):
    image = astronaut()
    result = fer.analyze(image)
    assert result is not None
    assert LABELS[int(np.argmax(result.probs))] == "happy" and result.probs[INDEX["happy"]] > 0.8, result.probs
    x, y, w, h = result.box  # her face: around (180..266, 83..170) in the 512 px photo
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 200 and 50 < w < 160, result.box
    # as a webcam would frame her: head and shoulders, off-centre in 640x480 (face ~130 px)
    frame = np.full((480, 640, 3), 40, np.uint8)
    frame[:, 60:60 + 480] = cv2.resize(image[0:320, 100:420], (480, 480))
    again = fer.analyze(frame)
    assert again is not None and LABELS[int(np.argmax(again.probs))] == "happy"


def test_no_face_gives_none(fer):
    rng = np.random.default_rng(0)
    for image in (np.zeros((240, 320, 3), np.uint8), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8),
                  np.ascontiguousarray(skdata.chelsea()[:, :, ::-1])):  # a cat
        assert fer.analyze(image) is None


# ------------------------------------------------------------------------------------------------
# Words

@pytest.fixture(scope="module")
def text_model() -> PrototypeTextEmotion:
    return PrototypeTextEmotion()


@pytest.mark.parametrize("text,label", [
    ("My grandmother passed away last week and I can't stop thinking about her.", "sad"),
    ("I feel so down and empty today, like nothing matters.", "sad"),
    ("You broke my phone again and didn't even apologise, I'm so angry!", "angry"),
    ("This is outrageous, I'm absolutely furious with the way they treated me.", "angry"),
    ("We won the championship, this is the best day of my life!", "happy"),
])
def test_text_emotion(text_model, text, label):
    estimate, = text_model.predict([text])
    assert estimate.label == label, estimate.scores()
    assert estimate.confidence > 0.5 and estimate.detail["embedding"].shape == (384,)


def test_text_emotion_batches_like_singles(text_model):
    texts = ["I am thrilled!", "I am miserable.", "The train leaves at nine."]
    together = text_model.predict(texts)
    for text, est in zip(texts, together):
        np.testing.assert_allclose(est.probs, text_model.predict([text])[0].probs, atol=1e-4)


@pytest.mark.parametrize("text", ["I want to kill myself", "I've been thinking about suicide",
                                  "I don't want to live anymore", "sometimes I hurt myself",
                                  "I just want to end it all", "I'd be better off dead"])
def test_crisis_language_is_found(text):
    assert crisis_terms(text)


@pytest.mark.parametrize("text", ["This killer app is to die for", "I could kill for a coffee",
                                  "The battery died", "I want to live by the sea"])
def test_ordinary_language_is_not_crisis(text):
    assert crisis_terms(text) == []


# ------------------------------------------------------------------------------------------------
# Labels and fusion

def test_label_aliases():
    assert canonical_label("hap") == canonical_label("Excited") == canonical_label("JOY") == "happy"
    assert canonical_label("ang") == "angry" and canonical_label("LABEL_0") is None
    mapping = label_map({0: "neu", 1: "hap", 2: "ang", 3: "sad"})
    probs, covers = project(np.array([0.1, 0.6, 0.2, 0.1]), mapping)
    assert covers.sum() == 4 and not covers[INDEX["surprise"]]
    assert probs[INDEX["happy"]] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="none of the model's labels"):
        label_map({0: "LABEL_0", 1: "LABEL_1"})


@pytest.mark.parametrize("present", [("face",), ("voice",), ("text",), ("face", "voice"), ("face", "text"),
                                     ("voice", "text"), ("face", "voice", "text")])
def test_fusion_with_modalities_missing(present):
    four = np.array([l in ("neutral", "happy", "sad", "angry") for l in LABELS])
    all_estimates = {"face": Estimate(onehot("happy"), 0.9),
                     "voice": Estimate(np.where(four, onehot("happy"), 0) / np.where(four, onehot("happy"), 0).sum(),
                                       0.4, four),
                     "text": Estimate(onehot("happy", 0.8), 0.8)}
    estimates = {name: (all_estimates[name] if name in present else None) for name in all_estimates}
    fused, used = fuse(estimates, {"face": 1.0, "voice": 0.5, "text": 1.5})
    assert set(used) == set(present) and sum(used.values()) == pytest.approx(1, abs=0.01)
    assert fused.sum() == pytest.approx(1) and LABELS[int(np.argmax(fused))] == "happy"
    if present == ("voice",):  # voice covers four labels: nothing on the others
        assert fused[INDEX["surprise"]] == 0


def test_fusion_weights_and_disagreement():
    face, text = Estimate(onehot("happy"), 0.9), Estimate(onehot("sad"), 0.9)
    fused, used = fuse({"face": face, "voice": None, "text": text}, {"face": 1.0, "text": 1.5})
    assert LABELS[int(np.argmax(fused))] == "sad" and used["text"] == pytest.approx(0.6)
    fused, used = fuse({"face": face, "voice": None, "text": text}, {"face": 1.0, "text": 0.2})
    assert LABELS[int(np.argmax(fused))] == "happy"
    # a modality that cannot see surprise does not vote it down
    four = np.array([l in ("neutral", "happy", "sad", "angry") for l in LABELS])
    voice = Estimate(np.where(four, 0.25, 0.0), 1.0, four)
    fused, _ = fuse({"face": Estimate(onehot("surprise"), 0.9), "voice": voice, "text": None}, {})
    assert LABELS[int(np.argmax(fused))] == "surprise"
    fused, used = fuse({"face": None, "voice": None, "text": None}, {})
    assert not fused.any() and used == {}


def test_smoothing_ignores_a_blip_and_follows_a_change():
    smoother, labels = Smoother(tau=1.0), LabelHysteresis(0.08)
    t = 0.0
    for _ in range(8):  # 2 s of happy frames at 4 fps
        assert labels.update(smoother.update(onehot("happy"), t)) == "happy"
        t += 0.25
    # one odd frame, then happy again: no flicker
    assert labels.update(smoother.update(onehot("angry"), t)) == "happy"
    for _ in range(4):
        t += 0.25
        assert labels.update(smoother.update(onehot("happy"), t)) == "happy"
    # a lasting change wins within about tau * ln 2 (+ the hysteresis margin)
    start, switched = t, None
    while switched is None:
        t += 0.25
        if labels.update(smoother.update(onehot("sad"), t)) == "sad":
            switched = t - start
    assert 0.5 <= switched <= 1.25, switched
    # no smoothing: immediate
    assert LabelHysteresis().update(Smoother(0).update(onehot("fear"), 0)) == "fear"


def test_hysteresis_keeps_label_between_near_equal_scores():
    labels = LabelHysteresis(0.08)
    a = np.zeros(len(LABELS)); a[INDEX["happy"]], a[INDEX["neutral"]] = 0.52, 0.48
    b = np.zeros(len(LABELS)); b[INDEX["happy"]], b[INDEX["neutral"]] = 0.47, 0.53
    assert [labels.update(p) for p in (a, b, a, b)] == ["happy"] * 4


# ------------------------------------------------------------------------------------------------
# Voice

def test_mfcc_shape():
    frames = MfccExtractor()(np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32))
    assert frames.shape == (98, 40) and np.isfinite(frames).all()
    assert MfccExtractor()(np.zeros(100, np.float32)).shape == (0, 40)


def test_prosody_arousal_rises_with_a_livelier_voice():
    calm = load_audio(espeak("en", "I walked to the station and waited for the train to arrive.", speed=140))
    lively = load_audio(espeak("en", "I walked to the station and waited for the train to arrive.", speed=200))
    features = prosody_features(calm)
    assert features is not None and 80 < 100 * 2 ** (features["pitch_st"] / 12) < 200
    assert prosody_features(np.zeros(SR, np.float32)) is None  # silence: nothing to say
    baseline = ProsodyBaseline()
    first = baseline.estimate(features)
    assert first.detail["method"] == "prosody-heuristic" and first.label == "neutral"
    for _ in range(4):
        same = baseline.estimate(prosody_features(calm))
    assert same.label == "neutral" and abs(same.detail["arousal"]) < 0.2
    louder = np.clip(lively * 3.0, -1, 1)  # faster and about 10 dB louder
    excited = baseline.estimate(prosody_features(louder))
    assert excited.detail["arousal"] > same.detail["arousal"] + 0.3, excited.detail
    assert excited.covers.sum() == 4 and excited.confidence <= 0.5  # a heuristic: never trusted much


# ------------------------------------------------------------------------------------------------
# Responses

def test_cbt_responses_vary_and_never_repeat_back_to_back():
    responder = Responder(seed=1)
    for label in LABELS:
        responses = [responder.respond(label) for _ in range(30)]
        assert all(a != b for a, b in zip(responses, responses[1:]))
        assert len(set(responses)) >= 4
        assert all(r.endswith(("?", ".")) and len(r) > 40 for r in responses)


def test_crisis_response_gives_support_guidance():
    responder = Responder(seed=0)
    responses = [responder.respond("sad", crisis=True) for _ in range(4)]
    assert all(r in CRISIS for r in responses) and responses[0] != responses[1]
    assert all("988" in r and "116 123" in r and "findahelpline.com" in r for r in responses)


# ------------------------------------------------------------------------------------------------
# Options

def test_options_are_checked():
    with pytest.raises(OptionError, match="interval"):
        EmotionPipeline.validate(EmotionPipeline, {**EmotionPipeline.defaults, "interval": 0})
    with pytest.raises(OptionError, match="face_fps must be a number"):
        EmotionPipeline.validate(EmotionPipeline, {**EmotionPipeline.defaults, "face_fps": "fast"})
    with pytest.raises(OptionError, match="smoothing"):
        EmotionPipeline.validate(EmotionPipeline, {**EmotionPipeline.defaults, "smoothing": float("nan")})
    EmotionPipeline.validate(EmotionPipeline, dict(EmotionPipeline.defaults))


# ------------------------------------------------------------------------------------------------
# The trainable fusion network

SYNTHETIC = {  # label -> (sentences, pitch Hz, loudness)
    "neutral": (["The bus comes at {n} o'clock.", "I put {n} plates on the table.",
                 "The report has {n} pages.", "We have {n} chairs in the room."], 120, 0.1),
    "happy": (["I got {n} presents, I'm delighted!", "What a lovely day, {n} friends came to see me!",
               "I passed all {n} exams, I'm thrilled!", "Everything is great, {n} reasons to smile."], 240, 0.3),
    "sad": (["I miss her so much, {n} years without her.", "I lost {n} friends this year and feel empty.",
             "Nothing has gone right for {n} weeks, I feel hopeless.", "I cried {n} times today."], 90, 0.05),
    "angry": (["They lied to me {n} times, I'm furious!", "I've waited {n} hours, this is outrageous!",
               "Stop interrupting me, this is the {n}th time!", "I hate this, {n} broken promises!"], 180, 0.6),
}


def synthetic_folder(root, per_label: int = 10, seed: int = 0):
    """An IEMOCAP-style labelled folder: a transcript and a tone-like voice per utterance
    (distinct pitch and loudness per label), the astronaut's face for some happy ones."""
    from testing.media import write_wav
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.8 * SR)) / SR
    folder_names = {"neutral": "neu", "happy": "hap", "sad": "sad", "angry": "ang"}  # IEMOCAP-style
    for label, (sentences, f0, level) in SYNTHETIC.items():
        folder = root / folder_names[label]
        folder.mkdir(parents=True)
        for i in range(per_label):
            stem = f"utt_{i:02d}"
            if i % 5 != 4:  # every fifth utterance has no transcript
                (folder / f"{stem}.txt").write_text(sentences[i % 4].format(n=int(rng.integers(2, 50))))
            if i % 5 != 3:  # and every fifth another one no audio
                pitch = f0 * rng.uniform(0.95, 1.05)
                wave = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 5))
                write_wav(folder / f"{stem}.wav", (level * wave / 2 + rng.normal(0, 0.003, len(t))).astype(np.float32))
            if label == "happy" and i < 2:
                cv2.imwrite(str(folder / f"{stem}.png"), astronaut())
    return root


def test_training_command_learns_and_weights_load_back(tmp_path, capsys):
    from pipelines.emotion import train as emotion_train

    folder = synthetic_folder(tmp_path / "data")
    items = emotion_train.scan(folder)
    assert len(items) == 40 and {it["label"] for it in items} == {"neutral", "happy", "sad", "angry"}
    out = tmp_path / "fusion.pt"
    assert emotion_train.main([str(folder), "--out", str(out), "--epochs", "40", "--val", "0.2"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    summary, final = lines[0], lines[-1]
    assert summary["samples"] == 40 and summary["with_face"] == 2 and summary["with_text"] == 32
    assert final["best"]["val_acc"] >= 0.85, final
    assert lines[1]["loss"] > final["best"]["loss"]  # it learned

    net = fusion_net.load(out)
    assert net.labels == ("neutral", "happy", "sad", "angry")
    samples = emotion_train.featurize(items)
    truth = np.array([net.labels.index(s["label"]) for s in samples])
    probs = fusion_net.predict(net, samples)
    assert np.mean(probs.argmax(1) == truth) >= 0.9
    # each modality alone still works (modality dropout in training)
    text_only = [{**s, "mfcc": None, "face": None} for s in samples if s["text"] is not None]
    voice_only = [{**s, "text": None, "face": None} for s in samples if s["mfcc"] is not None]
    for subset in (text_only, voice_only):
        truth = np.array([net.labels.index(s["label"]) for s in subset])
        assert np.mean(fusion_net.predict(net, subset).argmax(1) == truth) >= 0.8
    # saved and loaded nets agree exactly
    again = fusion_net.load(out)
    np.testing.assert_allclose(fusion_net.predict(again, samples), probs, atol=1e-6)


def test_bad_weights_and_bad_folders_are_refused(tmp_path):
    import torch
    from pipelines.emotion import train as emotion_train

    bogus = tmp_path / "bogus.pt"
    torch.save({"something": 1}, bogus)
    with pytest.raises(ValueError, match="not an emotion fusion weights file"):
        fusion_net.load(bogus)
    (tmp_path / "data" / "bored").mkdir(parents=True)
    with pytest.raises(ValueError, match="not an emotion label"):
        emotion_train.scan(tmp_path / "data")
    with pytest.raises(ValueError, match="not a folder"):
        emotion_train.scan(tmp_path / "missing")


