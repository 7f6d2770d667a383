"""The commentary pipeline: chat-log parsing, media decoding and features, the model, training
(loss, perplexity, checkpoints, resume), generation, the CLI, and the live pipeline over WebRTC.

The synthetic stream: 2-second scenes of a red or blue picture with a low (220 Hz) or high
(880 Hz) tone, written as real MP4s (H.264 + AAC) with PyAV; the chat says what it sees and hears
("red screen low hum"), so a model can only get the comments right by using both modalities.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from pipelines.commentary.__main__ import main as cli
from pipelines.commentary.data import (CommentDataset, FeatureConfig, Vocabulary, decode_media, detokenize,
                             parse_chat, parse_timestamp, preprocess, resize_frame, tokenize,
                             window_features)
from pipelines.commentary.generate import generate
from pipelines.commentary.model import CommentaryModel, Commentator, ModelConfig, sample_next
from pipelines.commentary.train import TrainOptions, best_path, train
from pipelines.base import OptionError
from pipelines.commentary.pipeline import CommentaryPipeline

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220)}  # RGB
TONES = {"low": 220.0, "high": 880.0}
SOUNDS = {"low": "hum", "high": "beep"}
FEATURES = FeatureConfig(window=1.0, fps=4, frame_width=16, frame_height=16, n_mels=32, n_fft=512,
                         hop_length=640)
TINY = TrainOptions(epochs=40, batch_size=16, lr=3e-3, hidden_size=32, embed_size=16, dropout=0.0,
                    val_fraction=0.2, seed=0)


def comment_for(colour: str, pitch: str) -> str:
    return f"{colour} screen {pitch} {SOUNDS[pitch]}"


def tone(freq: float, seconds: float, start: int = 0, level: float = 0.3, rng=None) -> np.ndarray:
    t = (start + np.arange(round(seconds * RATE))) / RATE
    x = level * np.sin(2 * np.pi * freq * t)
    if rng is not None:
        x = x + rng.normal(0, 0.01, len(t))
    return x.astype(np.float32)


def write_clip(path: Path, scenes: list[tuple[tuple[int, int, int], float, float]], fps: int = 10,
               size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """An MP4 (H.264 + AAC) of (RGB colour with pixel noise, tone frequency, seconds) scenes."""
    rng = np.random.default_rng(seed)
    width, height = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=RATE, layout="mono")
        frame_index = sample_index = 0
        for rgb, freq, seconds in scenes:
            for _ in range(round(seconds * fps)):
                image = np.clip(np.array(rgb, float) + rng.normal(0, 6, (height, width, 3)), 0, 255)
                frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
                frame.pts, frame_index = frame_index, frame_index + 1
                out.mux(video.encode(frame))
            samples = tone(freq, seconds, sample_index, rng=rng)
            for start in range(0, len(samples), 1024):
                frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = RATE, sample_index + start
                out.mux(audio.encode(frame))
            sample_index += len(samples)
        out.mux(video.encode())
        out.mux(audio.encode())
    return path


def clock(seconds: float) -> str:
    return f"{int(seconds) // 3600:02d}:{int(seconds) % 3600 // 60:02d}:{seconds % 60:04.1f}"


def synthetic_stream(folder: Path, name: str, repeats: int, seed: int, json_lines: bool) -> tuple[Path, Path]:
    """A recording of shuffled scenes and its chat log: two comments per scene, each late enough
    in its scene that the 1 s window before it shows only that scene."""
    classes = [(c, p) for c in COLOURS for p in TONES] * repeats
    np.random.default_rng(seed).shuffle(classes)
    video = write_clip(folder / f"{name}.mp4", [(COLOURS[c], TONES[p], 2.0) for c, p in classes], seed=seed)
    lines = []
    for i, (colour, pitch) in enumerate(classes):
        for offset in (1.4, 1.9):
            t, user, text = 2.0 * i + offset, f"viewer{i % 5}", comment_for(colour, pitch)
            lines.append(json.dumps({"time": t, "user": user, "message": text}) if json_lines
                         else f"[{clock(t)}] {user}: {text}")
    chat = folder / f"{name}.{'jsonl' if json_lines else 'log'}"
    chat.write_text("\n".join(lines) + "\n")
    return video, chat


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Features of two synthetic streams (plain and JSON-lines chat, with malformed lines), and a
    tiny model trained on them."""
    folder = tmp_path_factory.mktemp("commentary")
    first = synthetic_stream(folder, "stream-a", repeats=5, seed=1, json_lines=False)
    second = synthetic_stream(folder, "stream-b", repeats=2, seed=2, json_lines=True)
    with open(first[1], "a") as chat:  # malformed lines are reported and skipped
        chat.write("[00:00:03] nobody said anything\n{\"time\": \"soon\", \"message\": \"x\"}\nnot a chat line\n")
    messages = []
    manifest = preprocess([first, second], folder / "features", FEATURES, log=messages.append)
    checkpoint = folder / "model.pt"
    history = train(folder / "features", checkpoint, TINY, progress=False, log=messages.append)
    return {"folder": folder, "manifest": manifest, "checkpoint": checkpoint, "history": history,
            "log": messages}


# --- chat logs and words ----------------------------------------------------------------------
def test_parse_chat_plain_and_json_lines_with_malformed_ones_reported():
    lines = [
        "[00:00:05] alice: first!",
        '{"time": 7.5, "user": "bob", "message": "LUL that was close"}',
        "",  # blank lines are not problems
        "[01:02:03.5] carol: look: a colon in the text",
        '{"timestamp": "00:00:06", "author": "dan", "text": "PogChamp"}',
        "[00:00:09] eve:    ",  # empty message
        "[00:61:00] mallory: bad minutes",
        "no brackets: at all",
        '{"time": -3, "message": "negative"}',
        '{"time": 3, "user": "x"}',
        "{broken json",
        "[12:00] frank: minutes and seconds",
    ]
    messages, problems = parse_chat(lines)
    assert [(m.time, m.user, m.text) for m in messages] == [
        (5.0, "alice", "first!"), (6.0, "dan", "PogChamp"), (7.5, "bob", "LUL that was close"),
        (720.0, "frank", "minutes and seconds"), (3723.5, "carol", "look: a colon in the text")]
    assert [number for number, _ in problems] == [6, 7, 8, 9, 10, 11]
    reasons = dict(problems)
    assert "empty" in reasons[6] and "below 60" in reasons[7] and "JSON" in reasons[11]
    assert "message" in reasons[10]


@pytest.mark.parametrize("value,seconds", [("00:00:00", 0.0), ("1:02:03", 3723.0), ("02:03", 123.0),
                                           ("00:00:01.25", 1.25), (12, 12.0), (4.5, 4.5)])
def test_parse_timestamp(value, seconds):
    assert parse_timestamp(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "1:2:3:4", "-00:01", -1, float("nan"), True, None, "00:00:75"])
def test_parse_timestamp_rejects(value):
    with pytest.raises(ValueError):
        parse_timestamp(value)


def test_tokens_and_vocabulary():
    assert tokenize("LUL!! what a PLAY, gg") == ["lul", "!", "!", "what", "a", "play", ",", "gg"]
    assert detokenize(["what", "a", "play", ",", "gg", "!"]) == "what a play, gg!"
    vocab = Vocabulary.build(["gg gg wp", "gg ez", "wp"], min_count=2)
    assert vocab.tokens == ["<pad>", "<sos>", "<eos>", "<unk>", "gg", "wp"]
    ids = vocab.encode("GG ez wp", max_tokens=10)
    assert ids == [4, vocab.unk_id, 5]
    assert vocab.decode([vocab.sos_id, 4, 5, vocab.eos_id, 4]) == "gg wp"
    assert vocab.encode("gg wp gg wp", max_tokens=3) == [4, 5, 4]
    with pytest.raises(ValueError):
        Vocabulary(["gg", "wp"])


# --- media and features ----------------------------------------------------------------------------
def test_decode_media_samples_pictures_and_audio_of_a_real_mp4(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", [(COLOURS["red"], 440.0, 1.0), (COLOURS["blue"], 440.0, 1.0)])
    decoded = decode_media(path, FEATURES)
    assert decoded.frames.shape[1:] == (16, 16, 3) and decoded.frames.dtype == np.uint8
    assert abs(decoded.duration - 2.0) < 0.1
    assert len(decoded.frames) == int(decoded.duration * FEATURES.fps) + 1  # samples at 0, 0.25, ...
    means = decoded.frames.reshape(len(decoded.frames), -1, 3).mean(axis=1)
    red, blue = means[:4], means[4:8]  # the pictures shown at 0-0.75 s and 1-1.75 s
    assert np.all(red[:, 0] > 180) and np.all(red[:, 2] < 70), red
    assert np.all(blue[:, 2] > 180) and np.all(blue[:, 0] < 70), blue
    audio = decoded.audio[RATE // 4: RATE * 7 // 4]
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.argmax(spectrum) * RATE / len(audio) - 440) < 5
    assert 0.15 < np.abs(audio).max() < 0.45

    video, mel = decoded.window(2.0)
    assert video.shape == (FEATURES.frames_per_window, FEATURES.video_dim) and video.dtype == np.float32
    assert mel.shape == (FEATURES.samples_per_window // FEATURES.hop_length + 1, FEATURES.n_mels)
    assert video.reshape(-1, 16, 16, 3)[..., 2].mean() > 0.7  # the last second is blue
    early, _ = decoded.window(0.3)  # before a full window: the first picture fills the start
    assert np.all(early.reshape(-1, 16 * 16, 3)[..., 0].mean(axis=1) > 0.7)


def test_window_features_live_frames_equal_preprocessed_ones():
    """Live frames arrive at full size and are resized inside window_features; offline ones are
    resized while decoding. The two must give the model identical input."""
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]
    audio = rng.normal(0, 0.1, RATE).astype(np.float32)
    live = window_features(raw, audio, FEATURES)
    offline = window_features([resize_frame(f, FEATURES) for f in raw], audio, FEATURES)
    assert np.array_equal(live[0], offline[0]) and np.array_equal(live[1], offline[1])
    # A short window is completed with the oldest picture and leading silence.
    video, mel = window_features(raw[-1:], audio[-RATE // 2:], FEATURES)
    assert np.array_equal(video[0], video[-1])
    assert np.allclose(mel[-5:], live[1][-5:], atol=1e-4) and not np.allclose(mel[:5], live[1][:5], atol=1)
    black, _ = window_features([None], audio, FEATURES)
    assert not black.any()


# --- model ---------------------------------------------------------------------------------------
def test_sample_next_greedy_and_top_k():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]]).repeat(2000, 1)
    assert sample_next(logits[:1], 0.0, 0).item() == 1
    generator = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, 1.0, 2, generator)
    assert set(drawn.tolist()) == {1, 2}  # only the two most likely words, both drawn
    hot = sample_next(logits, 5.0, 0, generator)
    assert len(set(hot.tolist())) == 5  # high temperature, no top-k: every word happens


def test_model_shapes_and_fusion_initialises_the_decoder():
    config = ModelConfig(video_dim=12, audio_dim=5, vocab_size=9, hidden_size=8, embed_size=4, num_layers=2)
    model = CommentaryModel(config).eval()
    video, audio = torch.randn(3, 4, 12), torch.randn(3, 7, 5)
    h0, c0 = model.encode(video, audio)
    assert h0.shape == c0.shape == (2, 3, 8)
    logits = model(video, audio, torch.randint(0, 9, (3, 6)))
    assert logits.shape == (3, 6, 9)
    other = model(video.flip(0), audio, torch.zeros(3, 1, dtype=torch.long))  # the comment depends on the input
    assert not torch.allclose(logits[:, :1], other)


# --- training, checkpoints, generation ---------------------------------------------------------------
def test_preprocess_writes_one_example_per_comment(trained):
    manifest = trained["manifest"]
    assert [s["count"] for s in manifest["streams"]] == [40, 16]
    assert manifest["streams"][0]["malformed_lines"] == 3
    assert any("skipped" in line for line in trained["log"])
    dataset = CommentDataset(trained["folder"] / "features")
    assert len(dataset) == 56 and dataset.features == FEATURES
    video, mel, text = dataset[0]
    assert video.shape == (4, 768) and mel.shape == (26, 32) and text in {
        comment_for(c, p) for c in COLOURS for p in TONES}


def test_train_reaches_a_low_loss_and_generate_writes_the_right_comments(trained, tmp_path):
    history = trained["history"]
    assert len(history) == TINY.epochs
    last = history[-1]
    assert last["train_loss"] < 0.25 and last["val_perplexity"] < 1.3, last
    assert history[0]["train_loss"] > 4 * last["train_loss"]
    # Held-out clips: other shades, other pitches, noise the model never saw.
    for colour in COLOURS:
        for pitch in TONES:
            rgb = tuple(int(v * 0.85) for v in COLOURS[colour])
            clip = write_clip(tmp_path / f"{colour}-{pitch}.mp4", [(rgb, TONES[pitch] * 1.06, 1.6)], seed=9)
            results = generate(trained["checkpoint"], clip, times=[1.0, 1.5])
            assert [comments for _, comments in results] == [[comment_for(colour, pitch)]] * 2, (colour, pitch)


def test_checkpoint_round_trip(trained, tmp_path):
    commentator = Commentator.load(trained["checkpoint"])
    assert commentator.features == FEATURES
    assert set(commentator.vocab.tokens[4:]) == {"red", "blue", "screen", "low", "high", "hum", "beep"}
    assert best_path(trained["checkpoint"]).exists()
    state = torch.load(trained["checkpoint"], weights_only=True)  # plain data: no pickled code
    assert state["training"]["epoch"] == TINY.epochs and len(state["training"]["history"]) == TINY.epochs
    from pipelines.commentary.model import save_checkpoint

    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, commentator.model, commentator.vocab, commentator.features)
    again = Commentator.load(copy)
    for name, tensor in commentator.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    assert float(again.model.audio_mean.abs().max()) > 1  # the input normalisation travels with the weights
    window = window_features([np.full((8, 8, 3), (220, 30, 30), np.uint8)], tone(220.0, 1.0), FEATURES)
    assert again.comment([window]) == commentator.comment([window]) == ["red screen low hum"]
    with pytest.raises(ValueError, match="not a commentary checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        Commentator.load(tmp_path / "other.pt")


def test_resume_continues_exactly_where_training_stopped(trained, tmp_path):
    features = trained["folder"] / "features"
    options = dataclasses.replace(TINY, epochs=4)
    straight = train(features, tmp_path / "straight.pt", options, progress=False, log=lambda _: None)
    train(features, tmp_path / "resumed.pt", dataclasses.replace(options, epochs=2),
          progress=False, log=lambda _: None)
    lines = []
    resumed = train(features, tmp_path / "resumed.pt", options, resume=True, progress=False, log=lines.append)
    assert "resuming" in lines[0] and sum(line.startswith("epoch") for line in lines) == 2
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    assert [round(h["train_loss"], 5) for h in resumed] == [round(h["train_loss"], 5) for h in straight]
    a = Commentator.load(tmp_path / "straight.pt").model.state_dict()
    b = Commentator.load(tmp_path / "resumed.pt").model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_command_line(trained, tmp_path, capsys):
    stream = synthetic_stream(tmp_path, "cli", repeats=1, seed=3, json_lines=False)
    assert cli(["preprocess", "--stream", *map(str, stream), "--out", str(tmp_path / "f"), "--window", "1",
                "--fps", "4", "--frame-size", "16", "16", "--n-mels", "32", "--n-fft", "512", "--hop", "640"]) == 0
    assert "8 examples" in capsys.readouterr().out
    assert cli(["train", str(tmp_path / "f"), "--checkpoint", str(tmp_path / "m.pt"), "--epochs", "2",
                "--hidden", "8", "--embed", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2: train loss" in out and "perplexity" in out and (tmp_path / "m.pt").exists()
    clip = write_clip(tmp_path / "blue.mp4", [(COLOURS["blue"], TONES["high"], 1.5)])
    assert cli(["generate", str(clip), "--checkpoint", str(trained["checkpoint"]), "--at", "1.2",
                "--at", "00:00:01.5"]) == 0
    assert capsys.readouterr().out.splitlines() == ["[00:00:01.2] blue screen high beep",
                                                    "[00:00:01.5] blue screen high beep"]
    assert cli(["generate", str(clip), "--checkpoint", str(trained["checkpoint"]), "--temperature", "1.5",
                "--top-k", "3", "--samples", "5", "--seed", "1"]) == 0
    sampled = capsys.readouterr().out.splitlines()
    assert len(sampled) == 5 and all(line.startswith("[00:00:01.") for line in sampled)
    help_text = subprocess.run([sys.executable, "-m", "pipelines.commentary", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
    assert help_text.returncode == 0 and "preprocess" in help_text.stdout and "generate" in help_text.stdout


# --- the live pipeline ----------------------------------------------------------------------------
def test_pipeline_options_are_validated():
    for bad in ({"interval": 0.1}, {"interval": "5"}, {"temperature": -1}, {"top_k": 2.5}, {"top_k": True},
                {"colour": 1}):
        with pytest.raises(OptionError):
            CommentaryPipeline(None, bad)
    assert CommentaryPipeline(None, {"interval": 2, "temperature": 0, "top_k": 0}).options["top_k"] == 0


@pytest.mark.parametrize("colour,pitch", [("red", "low"), ("blue", "high")])
async def test_live_comments_over_webrtc(trained, settings, media_server, colour, pitch):
    media_server.server.settings.commentary.checkpoint = str(trained["checkpoint"])
    image = np.zeros((240, 320, 3), np.uint8)
    image[:] = COLOURS[colour][::-1]  # BGR
    client = StreamClient(media_server.url, ["commentary"],
                          {"commentary": {"interval": 1.0, "temperature": 0, "top_k": 0}})
    await client.connect(ArrayAudioTrack(tone(TONES[pitch], 2.0), RATE, loop=True), PatternVideoTrack(image=image))
    try:
        comments = [await client.next_event("comment", timeout=20) for _ in range(2)]
        assert [c["text"] for c in comments] == [comment_for(colour, pitch)] * 2, comments
        assert comments[1]["t"] - comments[0]["t"] >= 0.9 and comments[0]["latency_ms"] >= 0
    finally:
        await client.close()


async def test_without_a_checkpoint_the_session_gets_an_error_naming_the_commands(settings, media_server):
    assert media_server.server.settings.commentary.checkpoint == ""
    client = StreamClient(media_server.url, ["commentary"])
    await client.connect(ArrayAudioTrack(tone(220.0, 1.0), RATE, loop=True), PatternVideoTrack())
    try:
        error = await client.next_event("error", timeout=10)
        assert error["pipeline"] == "commentary"
        assert "python -m pipelines.commentary preprocess" in error["message"]
        assert "python -m pipelines.commentary train" in error["message"]
        assert "--commentary-checkpoint" in error["message"]
        client.send({"type": "ping", "id": 1})  # the session carries on
        assert (await client.next_event("pong"))["id"] == 1
        with pytest.raises(asyncio.TimeoutError):
            await client.next_event("comment", timeout=1.5)  # and writes nothing made up
    finally:
        await client.close()


async def test_a_missing_checkpoint_file_is_reported(tmp_path, settings, media_server):
    media_server.server.settings.commentary.checkpoint = str(tmp_path / "nowhere.pt")
    client = StreamClient(media_server.url, ["commentary"])
    await client.connect()
    try:
        error = await client.next_event("error", timeout=10)
        assert error["pipeline"] == "commentary" and "nowhere.pt" in error["message"]
    finally:
        await client.close()


async def test_the_page_shows_comments_as_a_chat(trained, settings, media_server, tmp_path):
    """In headless Chromium: a red fake camera and a low tone, commentary picked on the page; the
    comments arrive in the card's scrolling chat."""
    from testing.browser import assert_no_page_errors, chromium_page
    from testing.media import write_wav, write_y4m

    media_server.server.settings.commentary.checkpoint = str(trained["checkpoint"])
    red = np.zeros((240, 320, 3), np.uint8)
    red[:] = COLOURS["red"][::-1]
    y4m = write_y4m(tmp_path / "red.y4m", [red] * 25)
    wav = write_wav(tmp_path / "low.wav", tone(TONES["low"], 4.0))
    async with chromium_page(tmp_path, wav, y4m) as page:
        await page.goto(media_server.url)
        await page.wait_for_selector("#pipeline-commentary")
        await page.uncheck("#pipeline-gender")
        await page.check("#pipeline-commentary")
        await page.click("#entry-commentary details.options summary")  # the options fold open
        for key, value in (("interval", "1"), ("temperature", "0")):
            await page.fill(f"input.option-input[data-pipeline=commentary][data-key={key}]", value)
        await page.click("#start")
        await page.wait_for_function(
            "document.querySelectorAll('#card-commentary .commentary-chat li').length >= 3", timeout=30_000)
        lines = await page.eval_on_selector_all("#card-commentary .commentary-chat li", "els => els.map(e => e.textContent)")
        assert all(line.startswith("chatbot: ") for line in lines), lines
        assert lines[-1] == "chatbot: red screen low hum", lines
        assert "comment: red screen" in await page.text_content("#log")
        await page.click("#stop")
        assert_no_page_errors(page)
