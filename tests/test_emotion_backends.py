"""The emotion pipeline's hub-backed backends (face image classification, voice audio
classification, text classification, response generation) and the trained fusion network, with
tiny randomly-initialised transformers models saved to a tmp folder and loaded through the same
``from_pretrained`` code a hub id goes through; then a whole session running on all of them."""
from __future__ import annotations

import numpy as np
import pytest

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from pipelines.emotion import fusion_net
from pipelines.emotion.cbt import Responder, ResponseGenerator
from pipelines.emotion.face_expression import TransformersExpression
from pipelines.emotion.fusion import INDEX, LABELS
from pipelines.emotion.prosody import TransformersVoiceEmotion
from pipelines.emotion.text_emotion import TransformersTextEmotion
from testing.images import astronaut
from testing.media import espeak, load_audio

WORDS = ("i am so happy sad angry today the train was late and my phone broke we won "
         "feel down empty furious great day life nothing matters coach thought").split()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    import torch
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, trainers
    from transformers import (BertConfig, BertForSequenceClassification, BertTokenizerFast, GPT2Config,
                              GPT2LMHeadModel, PreTrainedTokenizerFast, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor, Wav2Vec2Config,
                              Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("emotion-models")
    paths = {}

    face = root / "face"
    labels = {0: "angry", 1: "happy", 2: "neutral", 3: "sad", 4: "surprise"}
    ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=5, id2label=labels, label2id={v: k for k, v in labels.items()},
    )).save_pretrained(face)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(face)
    paths["face"] = str(face)

    voice = root / "voice"  # IEMOCAP 4-class names, as superb/wav2vec2-base-superb-er has
    labels = {0: "neu", 1: "hap", 2: "ang", 3: "sad"}
    Wav2Vec2ForSequenceClassification(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, classifier_proj_size=16, num_labels=4, id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )).save_pretrained(voice)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(voice)
    paths["voice"] = str(voice)

    text = root / "text"  # GoEmotions-style names
    labels = {0: "joy", 1: "sadness", 2: "anger", 3: "fear", 4: "surprise", 5: "neutral", 6: "LABEL_6"}
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(text)
    BertForSequenceClassification(BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=7, id2label=labels, label2id={v: k for k, v in labels.items()},
    )).save_pretrained(text)
    paths["text"] = str(text)

    response = root / "response"
    tokenizer = Tokenizer(tk_models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator([" ".join(WORDS)] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", unk_token="<unk>")
    fast.save_pretrained(response)
    GPT2LMHeadModel(GPT2Config(vocab_size=fast.vocab_size, n_positions=256, n_embd=32, n_layer=1, n_head=2,
                               eos_token_id=0, bos_token_id=0)).save_pretrained(response)
    paths["response"] = str(response)

    weights = root / "fusion.pt"
    fusion_net.save(fusion_net.FusionNet(labels=("neutral", "happy", "sad", "angry")), weights)
    paths["fusion"] = str(weights)
    return paths


def test_transformers_face_backend(models):
    backend = TransformersExpression(models["face"])
    result, nothing = backend.predict([astronaut(), np.zeros((240, 320, 3), np.uint8)])
    assert nothing is None  # no face: nothing to classify
    assert result is not None and 150 < result.box[0] + result.box[2] / 2 < 300
    assert result.probs.sum() == pytest.approx(1) and result.covers.sum() == 5
    assert not result.covers[INDEX["fear"]] and result.probs[INDEX["fear"]] == 0


def test_transformers_voice_backend(models):
    backend = TransformersVoiceEmotion(models["voice"])
    clip = np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32)
    a, b = backend.predict([clip, clip[:8000]])
    assert set(a.scores()) == {"neutral", "happy", "angry", "sad"} and a.detail["method"] == "transformers"
    assert a.probs.sum() == pytest.approx(1) and 0.25 <= a.confidence <= 1
    np.testing.assert_allclose(backend.predict([clip])[0].probs, a.probs, atol=1e-5)  # batch = one by one
    assert b.probs.sum() == pytest.approx(1)


def test_transformers_text_backend(models):
    backend = TransformersTextEmotion(models["text"])
    estimates = backend.predict(["i am so happy today", "my phone broke and i feel down " * 50])
    for est in estimates:
        assert est.probs.sum() == pytest.approx(1) and est.covers.sum() == 6  # LABEL_6 is unmapped
        assert not est.covers[INDEX["disgust"]]
        # "joy" counted as happy, "sadness" as sad
        assert est.covers[INDEX["happy"]] and est.covers[INDEX["sad"]]


def test_generated_responses_fall_back_and_never_answer_a_crisis(models):
    generator = ResponseGenerator(models["response"])
    assert isinstance(generator("sad", "i feel down"), str)
    calls = []

    def counting(label, text=None):
        calls.append(label)
        return generator(label, text)

    responder = Responder(seed=0, generator=counting)
    responses = [responder.respond("sad", text="i feel down") for _ in range(5)]
    assert len(calls) == 5 and all(r.strip() for r in responses)
    assert all(a != b for a, b in zip(responses, responses[1:]))
    crisis = responder.respond("sad", crisis=True, text="i want to die")
    assert len(calls) == 5 and "988" in crisis  # crisis guidance is never generated


@pytest.fixture
def settings(settings, models):
    settings.pipelines = ["emotion"]
    settings.emotion.face_model = models["face"]
    settings.emotion.voice_model = models["voice"]
    settings.emotion.text_model = models["text"]
    settings.emotion.response_model = models["response"]
    settings.emotion.fusion_weights = models["fusion"]
    return settings


async def test_session_on_transformers_backends_and_fusion_network(media_server):
    speech = load_audio(espeak("en", "I walked to the station and waited for the train to arrive."))
    client = StreamClient(media_server.url, ["emotion"], {"emotion": {"interval": 0.5}})
    await client.connect(ArrayAudioTrack(speech, 16000, loop=True), PatternVideoTrack(512, 512, image=astronaut()))
    try:
        await client.next_event("ready", timeout=15)
        client.send({"type": "text", "text": "i am so happy today"})
        deadline_events = []
        for _ in range(40):
            event = await client.next_event("emotion", timeout=60)
            deadline_events.append(event)
            m = event["modalities"]
            if m["face"] and m["voice"] and m["text"]:
                break
        m = event["modalities"]
        assert m["face"] and m["voice"] and m["text"], deadline_events[-1]
        assert event["fusion"] == "network" and event["label"] in ("neutral", "happy", "sad", "angry")
        assert m["face"]["backend"] == "transformers" and m["voice"]["method"] == "transformers"
        assert m["voice"]["heuristic"] is False and m["text"]["method"] == "transformers"
        assert abs(sum(event["scores"].values()) - 1) < 0.01
        assert all(event["scores"][l] == 0 for l in LABELS if l not in ("neutral", "happy", "sad", "angry"))
        assert event["response"]
    finally:
        await client.close()
