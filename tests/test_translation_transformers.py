"""The hub-backed translation backends (transformers Marian MT, VITS TTS, SeamlessM4T v2) through
the same ``from_pretrained`` code a hub id goes through: tiny randomly-initialised models that the
tests build and save to a temporary folder, driven through the WebSocket endpoint."""
from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.translation.models import mt_spec, seamless_spec, tts_spec
from pipelines.translation.mt import MTRequest, TransformersMT, TransformersTranslator
from pipelines.translation.seamless import S2STRequest, SeamlessM4T
from pipelines.translation.tts import TransformersTTS, TTSRequest
from pipelines.translation.languages import available_pairs
from testing.media import espeak, load_audio
from testing.translation import EN_TEXT, ws_session


def save_tiny_marian(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    words = "good morning coffee water please buenos días café agua por favor".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0)
    MarianMTModel(config).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def save_tiny_vits(folder):
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    folder.mkdir(parents=True)
    chars = {c: i for i, c in enumerate("_ abcdefghijklmnopqrstuvwxyzáéíóúñ.,?¿")}
    (folder / "vocab.json").write_text(json.dumps(chars))
    config = VitsConfig(vocab_size=len(chars), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        ffn_dim=32, flow_size=16, spectrogram_bins=33, upsample_initial_channel=32,
                        upsample_rates=[8, 8], upsample_kernel_sizes=[16, 16], resblock_kernel_sizes=[3],
                        resblock_dilation_sizes=[[1, 3]], prior_encoder_num_flows=1,
                        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
                        duration_predictor_num_flows=1, duration_predictor_filter_channels=16,
                        depth_separable_num_layers=1, sampling_rate=16000)
    VitsModel(config).save_pretrained(folder)
    VitsTokenizer(str(folder / "vocab.json"), add_blank=True, phonemize=False).save_pretrained(folder)


def save_tiny_seamless(folder):
    from transformers import (GenerationConfig, SeamlessM4TFeatureExtractor, SeamlessM4TProcessor,
                              SeamlessM4TTokenizer, SeamlessM4Tv2Config, SeamlessM4Tv2Model)

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "▁": 4}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
    tokenizer = SeamlessM4TTokenizer(vocab=vocab, merges=[], src_lang="eng", tgt_lang="spa",
                                     additional_special_tokens=["__eng__", "__spa__"])
    config = SeamlessM4Tv2Config(
        vocab_size=len(tokenizer), t2u_vocab_size=20, char_vocab_size=20, hidden_size=16,
        max_position_embeddings=1024, encoder_layers=1, encoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_layers=1, decoder_ffn_dim=32, decoder_attention_heads=2, speech_encoder_layers=1,
        speech_encoder_attention_heads=2, speech_encoder_intermediate_size=32, t2u_encoder_layers=1,
        t2u_encoder_ffn_dim=32, t2u_encoder_attention_heads=2, t2u_decoder_layers=1, t2u_decoder_ffn_dim=32,
        t2u_decoder_attention_heads=2, t2u_max_position_embeddings=1024, t2u_variance_predictor_embed_dim=16,
        t2u_variance_predictor_hidden_dim=16, upsample_initial_channel=16, upsample_rates=[5, 4],
        upsample_kernel_sizes=[11, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        unit_hifi_gan_vocab_size=20, unit_embed_dim=16, lang_embed_dim=8, spkr_embed_dim=8,
        vocoder_num_langs=2, vocoder_num_spkrs=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        decoder_start_token_id=3,
        vocoder_offset=0)  # a random model may emit control units; offset 0 keeps them in the vocoder's range
    SeamlessM4Tv2Model(config).save_pretrained(folder)
    lang_ids = dict(zip(["eng", "spa"], tokenizer.convert_tokens_to_ids(["__eng__", "__spa__"])))
    GenerationConfig(text_decoder_lang_to_code_id=lang_ids, t2u_lang_code_to_id={"eng": 4, "spa": 5},
                     vocoder_lang_code_to_id={"eng": 0, "spa": 1}, pad_token_id=0, bos_token_id=2,
                     eos_token_id=3, decoder_start_token_id=3, max_new_tokens=8,
                     id_to_text={str(i): t for t, i in tokenizer.get_vocab().items()},
                     char_to_id={c: 2 + i % 17 for i, c in enumerate("▁abcdefghijklmnopqrstuvwxyz")},
                     ).save_pretrained(folder)
    SeamlessM4TProcessor(SeamlessM4TFeatureExtractor(), tokenizer).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    torch.manual_seed(0)  # the same random weights every run (some draws translate to nothing)
    root = tmp_path_factory.mktemp("tiny-models")
    save_tiny_marian(root / "opus-mt-en-es")
    save_tiny_vits(root / "mms-tts-spa")
    save_tiny_seamless(root / "seamless")
    return root


def test_tiny_backends_load_and_generate(tiny):
    translator = TransformersTranslator(str(tiny / "opus-mt-{src}-{tgt}"), "en", "es")
    assert isinstance(translator.translate("good morning"), str) and translator.translate(" ") == ""
    samples, rate = TransformersTTS(str(tiny / "mms-tts-{lang3}")).synthesize("buenos días", "es")
    assert rate == 16000 and samples.dtype == np.float32 and len(samples) > 0 and np.isfinite(samples).all()
    result = SeamlessM4T(str(tiny / "seamless")).translate(np.zeros(16000, np.float32), "en", "es", max_new_tokens=8)
    assert isinstance(result.text, str) and isinstance(result.source_text, str)
    assert result.sample_rate == 16000 and result.samples.ndim == 1 and len(result.samples) > 0


def counting(obj, method: str) -> list:
    """Wraps ``obj.method`` so that each call's first argument is noted in the returned list."""
    calls, inner = [], getattr(obj, method)

    def wrapper(*args, **kwargs):
        calls.append(args[0] if args else kwargs)
        return inner(*args, **kwargs)
    setattr(obj, method, wrapper)
    return calls


def test_batches_run_one_generate_per_pair_and_one_pass_per_language(tiny):
    """A batch of MT requests is one padded ``generate`` per language pair, a batch of TTS requests
    one forward pass per language; each result as the request alone would get."""
    mt = TransformersMT(str(tiny / "opus-mt-{src}-{tgt}"))
    texts = ["good morning", " ", "coffee water please good morning", "please"]
    alone = [mt.translator("en", "es").translate(t) for t in texts]
    generates = counting(mt.translator("en", "es").model, "generate")
    assert mt.predict([MTRequest(t, "en", "es") for t in texts]) == alone
    assert len(generates) == 1 and alone[1] == ""

    tts = TransformersTTS(str(tiny / "mms-tts-{lang3}"))
    _, model, _ = tts._load("es")
    model.noise_scale = model.noise_scale_duration = 0.0  # deterministic, to compare with one by one
    texts = ["buenos días", "café", "agua por favor, buenos días"]
    alone = [tts.synthesize(t, "es") for t in texts]
    passes = counting(model, "forward")
    batch = tts.predict([TTSRequest(t, "es") for t in texts])
    assert len(passes) == 1
    for (samples, rate), (expected, expected_rate) in zip(batch, alone):
        assert rate == expected_rate == 16000 and samples.dtype == np.float32
        assert len(samples) == len(expected) > 0  # each cut to its own length, not the longest's


def round_trip(value):
    """What a value is once it has crossed to another process (a Ray Serve replica)."""
    return pickle.loads(pickle.dumps(value))


def test_specs_build_the_models_anywhere(tiny):
    """Each model's spec, pickled as a replica gets it, builds a working batch ``predict``;
    requests and results survive pickling."""
    settings = SimpleNamespace(mt_model=str(tiny / "opus-mt-{src}-{tgt}"), tts_model=str(tiny / "mms-tts-{lang3}"),
                               seamless_model=str(tiny / "seamless"))
    mt = round_trip(mt_spec(settings)).predictor()
    texts = mt([round_trip(MTRequest("good morning", "en", "es")), round_trip(MTRequest(" ", "en", "es"))])
    assert isinstance(texts[0], str) and texts[1] == "" and round_trip(texts) == texts
    tts = round_trip(tts_spec(settings)).predictor()
    ((samples, rate),) = round_trip(tts([round_trip(TTSRequest("buenos días", "es"))]))
    assert rate == 16000 and samples.dtype == np.float32 and len(samples) > 0
    seamless = round_trip(seamless_spec(settings)).predictor()
    request = round_trip(S2STRequest(np.zeros(16000, np.float32), "en", "es"))
    (result,) = seamless([request])
    back = round_trip(result)
    assert (back.source_text, back.text, back.sample_rate) == (result.source_text, result.text, 16000)
    assert np.array_equal(back.samples, result.samples) and len(back.samples) > 0


@pytest.fixture
def transformers_settings(settings, tiny):
    settings.translation.mt_backend = "transformers"
    settings.translation.mt_model = str(tiny / "opus-mt-{src}-{tgt}")
    settings.translation.tts_backend = "transformers"
    settings.translation.tts_model = str(tiny / "mms-tts-{lang3}")
    settings.translation.seamless_model = str(tiny / "seamless")
    return settings


async def test_transformers_cascade_and_seamless_over_websocket(transformers_settings, media_server):
    assert ("en", "de") in available_pairs(transformers_settings.translation)  # any pair: the model decides
    url = media_server.url.replace("http", "ws") + "/ws/translate"
    english = load_audio(espeak("en-us", EN_TEXT))
    for backend in ("cascade", "seamless"):
        events, speech = await ws_session(url, {"type": "start_stream", "src_lang": "en", "tgt_lang": "es",
                                                "sample_rate": 16000, "options": {"backend": backend}}, english)
        errors = [e for e in events if e["type"] == "error"]
        assert not errors, errors
        finals = [e for e in events if e["type"] == "translation" and e["final"]]
        assert finals, (backend, [(e["type"], e.get("text")) for e in events])
        stages = {"asr", "mt", "tts"} if backend == "cascade" else {"s2st"}
        assert stages <= set(finals[0]["timings_ms"]), finals[0]
        assert len(speech) > 0 and sum(e["audio_seconds"] for e in finals) > 0
