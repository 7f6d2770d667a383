"""What pipelines draw on the returned video (tracks/overlay.py): wrapping, layout, fading, and
the per-pipeline ``overlay`` option that turns it off."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from client import PatternVideoTrack, StreamClient
from pipelines.emotion.pipeline import overlay as emotion_overlay
from tracks.overlay import FADE, Badge, Chat, Layout, Overlay, Subtitle, opacity, subtitle_lines
from tracks.text import ELLIPSIS, font, text_width, wrap, wrap_tail

SIZES = [(320, 240), (640, 480), (1280, 720), (512, 512)]
# words of several scripts and lengths, and words far longer than a line
WORDS = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
                          min_size=1, max_size=12),
                  st.sampled_from(["¿Qué", "niño", "Привет", "你好世界", "Ελληνικά", "W" * 60, "traducción"]))
TEXTS = st.lists(WORDS, max_size=60).map(" ".join)


@hsettings(max_examples=150, deadline=None)
@given(text=TEXTS, width=st.integers(20, 1300), px=st.sampled_from([10, 14, 24, 39]))
def test_wrapped_lines_never_exceed_the_width_and_keep_every_character(text, width, px):
    face = font(px)
    lines = wrap(text, face, width)
    assert all(text_width(line, face) <= width for line in lines if len(line) > 1)
    assert "".join("".join(line.split()) for line in lines) == "".join(text.split())  # nothing lost or reordered
    tail = wrap_tail(text, face, width, 2)
    assert len(tail) <= 2 and all(text_width(line, face) <= width for line in tail if len(line) > 1)
    if tail and lines != tail:  # cut: the end is kept, after an ellipsis
        assert tail[0].startswith(ELLIPSIS) or len(wrap(ELLIPSIS + text.split()[-1], face, width)) > 2
        assert "".join(text.split()).endswith("".join("".join(tail).split()).removeprefix(ELLIPSIS))


@hsettings(max_examples=40, deadline=None)
@given(text=TEXTS, secondary=TEXTS, size=st.sampled_from(SIZES))
def test_subtitles_fit_the_frame_in_three_lines_at_most(text, secondary, size):
    layout = Layout(*size)
    lines = subtitle_lines(Subtitle(text, secondary), layout)
    assert len(lines) <= 3
    assert all(text_width(t, f) <= layout.subtitle_width - 2 * layout.pad for t, f, _ in lines if len(t) > 1)
    image = np.zeros((size[1], size[0], 3), np.uint8)
    Overlay().draw(image, [Subtitle(text, secondary), Chat(text), Badge(text, 0.5, title=secondary)])


@pytest.mark.parametrize("size", SIZES)
def test_each_kind_has_its_place_and_sprites_fit(size):
    width, height = size
    long = "Buenos días, ¿cómo estás? Hoy vamos a hablar de la traducción en tiempo real. " * 3
    items = [Badge("female", 0.97, title="voice"), *emotion_overlay(
                 "happy", 0.8, {"face": {"label": "happy", "score": 0.9}, "voice": None, "text": None}, "crisis"),
             Chat(long, user="AI"), Subtitle(long, secondary=long)]
    overlay = Overlay()
    layout = overlay.layout(width, height)
    for item in items:
        assert overlay.sprite(item, layout).width <= width - 2 * layout.margin
    image = overlay.draw(np.full((height, width, 3), 128, np.uint8), items)
    changed = np.any(image != 128, axis=2)
    assert changed[-height // 8:, width // 3: 2 * width // 3].any()  # subtitles: bottom centre
    assert changed[: height // 8, -width // 5:].any()  # badges: top right
    assert not changed[: height // 8, : width // 5].any()  # the top left stays clear
    assert changed[height // 3: -height // 5, : width // 10].any()  # chat: left, above the subtitles


def test_sprites_are_kept_only_for_what_is_shown_and_a_few_more():
    overlay = Overlay(spare=4)
    image = np.zeros((720, 1280, 3), np.uint8)
    for n in range(30):  # a live caption changing 30 times, beside a badge
        overlay.draw(image, [Badge("female", 0.9), Subtitle(f"caption number {n}")], 0)
    assert len(overlay._sprites) == 2 + 4


def test_text_outside_latin1_is_drawn_with_a_truetype_font():
    face = font(20)
    assert hasattr(face, "path"), "no TrueType font: accents would not show (install fonts-dejavu-core)"
    # é is its own glyph, not the missing-glyph box: it differs from e and from an unknown code point
    assert text_width("é", face) > 0
    image = Overlay().draw(np.zeros((240, 320, 3), np.uint8), [Subtitle("é")], 0)
    other = Overlay().draw(np.zeros((240, 320, 3), np.uint8), [Subtitle("\U000f0000")], 0)
    assert not np.array_equal(image, other)


def test_items_fade_out_after_their_hold_time():
    item = Subtitle("hola", hold=4.0, at=100.0)
    assert opacity(item, 100.0) == opacity(item, 104.0) == 1.0
    levels = [opacity(item, 104.0 + FADE * f) for f in (0.1, 0.5, 0.9)]
    assert 1.0 > levels[0] > levels[1] > levels[2] > 0.0
    assert opacity(item, 104.0 + FADE) == 0.0 and opacity(Badge("x"), 1e9) == 1.0  # no hold: stays
    frame = np.full((480, 640, 3), 128, np.uint8)
    overlay = Overlay()
    shown = overlay.draw(frame.copy(), [item], 101.0)
    half = overlay.draw(frame.copy(), [item], 104.0 + FADE / 2)
    gone = overlay.draw(frame.copy(), [item], 104.0 + FADE)
    assert np.array_equal(gone, frame)
    shown_diff, half_diff = (np.abs(x.astype(int) - 128).sum() for x in (shown, half))
    assert 0 < half_diff < shown_diff
    # a frame's look changes only at the fade steps: equal states, equal pictures (the track's cache)
    assert Overlay.state([item], 101.0) == Overlay.state([item], 103.0)
    assert Overlay.state([item], 104.0 + FADE) == ()


async def test_overlay_option_turns_a_pipelines_overlay_off_and_on(media_server):
    client = StreamClient(media_server.url, ["gender"], {"gender": {"overlay": False}})
    client.keep_frames = 1
    await client.connect(None, PatternVideoTrack(320, 240, image=np.full((240, 320, 3), 128, np.uint8)))
    try:
        await client.next_event("ready", timeout=15)
        session = media_server.server.sessions[client.session_id]
        session.show("gender", Badge("female", 0.9, title="voice"))
        assert session.overlay_items() == []
        client.send({"type": "config", "pipeline": "gender", "options": {"overlay": True}})
        assert (await client.next_event("config"))["options"]["overlay"] is True
        assert session.overlay_items() == [Badge("female", 0.9, title="voice")]
        client.send({"type": "config", "pipeline": "gender", "options": {"overlay": "no"}})
        assert "overlay" in (await client.next_event("error"))["message"]
        session.show("gender")
        assert session.overlay_items() == []
    finally:
        await client.close()


@pytest.mark.parametrize("size", [(320, 240), (640, 480), (1280, 720)])
def test_drawing_on_the_decoded_yuv_picture_matches_drawing_in_bgr(size):
    """The returned video draws on the camera's own I420 picture (no colour conversion either
    way): what the viewer sees is what the BGR drawing, encoded as I420, would show, within
    rounding (the sprite's chroma is averaged over 2x2 pixels before blending, not after)."""
    import av

    width, height = size
    rng = np.random.default_rng(0)
    camera = av.VideoFrame.from_ndarray(
        np.clip(rng.normal(120, 30, (height, width, 3)), 0, 255).astype(np.uint8), format="bgr24"
    ).reformat(format="yuv420p")
    items = [Badge("female", 0.97, title="voice"), Subtitle("¿Qué tal? Hoy hablamos", secondary="How are you?"),
             Chat("a comment on the stream", user="AI")]
    now = items[0].at + 0.1
    drawn_bgr = Overlay().draw(camera.to_ndarray(format="bgr24").copy(), items, now)
    expected = (av.VideoFrame.from_ndarray(drawn_bgr, format="bgr24").reformat(format="yuv420p")
                .to_ndarray(format="bgr24").astype(float))
    i420 = camera.to_ndarray(format="yuv420p").copy()
    drawn = Overlay().draw(i420, items, now, i420=True)
    assert drawn is i420
    got = av.VideoFrame.from_ndarray(i420, format="yuv420p").to_ndarray(format="bgr24").astype(float)
    changed = np.abs(expected - camera.to_ndarray(format="bgr24")).max(axis=2) > 8
    assert changed.mean() > 0.02  # the items are there
    error = np.abs(got - expected).max(axis=2)
    assert np.median(error[changed]) < 6
    assert np.mean(error[changed] < 24) > 0.95  # only the chroma at sharp coloured edges differs more
    assert np.abs(got - expected)[~changed].mean() < 3
