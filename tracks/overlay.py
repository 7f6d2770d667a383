"""Results drawn on the returned video: subtitles, badges and chat lines.

Pipelines say *what* to show with small immutable items and hand them to their context, which
replaces whatever that pipeline showed before (none clears it):

    context.show("translation", Subtitle("Hola, ¿qué tal?", secondary="Hello, how are you?"))
    context.show("gender", Badge("female", 0.97, title="voice"))
    context.show("commentary", *recent_comments)          # Chat items, oldest first
    context.show("emotion")                               # nothing

``Overlay().draw(image, items, now)`` lays them out for the frame's size (320x240 to 1280x720
and beyond):

* ``Subtitle``: bottom centre, wrapped to the frame's width, at most two balanced lines (a long
  caption a size smaller, then its newest words after ``…``) with one smaller line of
  ``secondary`` above; each line on its own dark box. Fades out ``hold`` seconds after it was shown.
* ``Badge``: a card in the top-right corner, stacked top-down: a small title, the label with its
  percentage, a confidence bar, optional smaller rows (name, label, bar). ``alert`` draws it red.
* ``Chat``: bottom left, above the subtitles, a chat-style line (coloured user name, text wrapped
  to two lines), newest at the bottom; each fades out after ``hold`` seconds.

Each item is rendered once per frame size into a small BGR + alpha sprite (PIL, DejaVu Sans or
another system TrueType font, so accents and most scripts show); a frame only blends the
sprites it shows (``cv2.blendLinear`` over their boxes), at ``FADE`` opacity steps.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tracks.sprites import Sprite, i420_planes
from tracks.text import ELLIPSIS, clip_lines, fit_line, font, text_width, wrap, wrap_tail

FADE = 0.8  # seconds an item takes to fade out once its hold time is over
FADE_STEPS = 16  # opacity levels while fading (a frame's look only changes at these)

# Colours (RGB, alpha) of the sprites.
BOX = (12, 14, 20, 170)
ALERT_BOX = (96, 16, 20, 200)
TEXT = (255, 255, 255, 255)
MUTED = (190, 198, 210, 255)
SECONDARY = (215, 225, 240, 255)
ACCENT = (64, 200, 180, 255)
ALERT = (236, 72, 72, 255)
TRACK = (255, 255, 255, 60)
CHAT_USER = (186, 150, 255, 255)


def _now() -> float:
    return time.monotonic()


@dataclass(frozen=True)
class Subtitle:
    """Captions at the bottom: ``text`` (e.g. the translation) and, smaller above it,
    ``secondary`` (e.g. what was said). Shown for ``hold`` seconds (None: until replaced)."""

    text: str
    secondary: str = ""
    hold: float | None = 4.0
    at: float = field(default_factory=_now, compare=False)


@dataclass(frozen=True)
class Badge:
    """A card in the top-right corner: ``title`` (e.g. "voice"), ``label`` and its confidence
    ``score`` (0–1, drawn as a percentage and a bar; None for neither), smaller ``rows`` of
    ``(name, label, score or None)``; ``alert`` draws it in red."""

    label: str
    score: float | None = None
    title: str = ""
    rows: tuple[tuple[str, str, float | None], ...] = ()
    alert: bool = False
    hold: float | None = None
    at: float = field(default_factory=_now, compare=False)


@dataclass(frozen=True)
class Chat:
    """A chat-style line at the bottom left: ``user`` in colour, then ``text``."""

    text: str
    user: str = "chat"
    hold: float | None = 15.0
    at: float = field(default_factory=_now, compare=False)


Item = Union[Subtitle, Badge, Chat]


def opacity(item: Item, now: float) -> float:
    """1 while shown, falling to 0 over ``FADE`` seconds once ``hold`` is over, in steps."""
    if item.hold is None:
        return 1.0
    left = item.at + item.hold + FADE - now
    if left >= FADE:
        return 1.0
    if left <= 0:
        return 0.0
    return float(np.ceil(left / FADE * FADE_STEPS) / FADE_STEPS)


# --- sizes for one frame size ----------------------------------------------------------------------
class Layout:
    """Sizes in pixels for a frame: everything scales with ``u`` (1 at 640x480), with floors that
    keep text readable on a 320x240 frame."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        u = min(width / 640, height / 480)
        px = lambda base, floor: int(round(max(floor, base * u)))  # noqa: E731
        self.margin = px(14, 6)
        self.pad = px(7, 3)
        self.gap = px(6, 3)
        self.subtitle_px = px(24, 14)
        self.secondary_px = px(18, 11)
        self.label_px = px(19, 12)
        self.small_px = px(14, 10)
        self.bar_px = px(6, 3)
        self.radius = px(6, 2)
        self.chat_px = px(16, 10)
        self.badge_width = int(min(max(124, min(0.3 * width, 200 * u)), width - 2 * self.margin))
        self.subtitle_width = width - 2 * self.margin  # a line's box, padding included
        self.chat_width = int(min(max(0.45 * width, 150), width - 2 * self.margin))


# --- sprites -----------------------------------------------------------------------------------------
def _line_height(face) -> int:
    ascent, descent = face.getmetrics()
    return ascent + descent


def _boxed_lines(lines: list[tuple[str, ImageFont.FreeTypeFont, tuple]], layout: Layout,
                 align: str = "center") -> Image.Image:
    """Lines of text, each on its own rounded dark box hugging it, stacked top-down."""
    pad = layout.pad
    sizes = [(int(np.ceil(text_width(t, f))) + 2 * pad, _line_height(f) + pad) for t, f, _ in lines]
    width = max(w for w, _ in sizes)
    height = sum(h for _, h in sizes)
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    y = 0
    for (text, face, colour), (w, h) in zip(lines, sizes):
        x = (width - w) // 2 if align == "center" else 0
        draw.rounded_rectangle((x, y, x + w - 1, y + h - 1), radius=layout.radius, fill=BOX)
        draw.text((x + pad, y + pad // 2), text, font=face, fill=colour)
        y += h
    return image


def subtitle_lines(item: Subtitle, layout: Layout) -> list[tuple[str, ImageFont.FreeTypeFont, tuple]]:
    """(text, font, colour) of each line: one of ``secondary``, two of ``text`` at most."""
    main, small = font(layout.subtitle_px, bold=True), font(layout.secondary_px)
    room = layout.subtitle_width - 2 * layout.pad
    lines = [(t, small, SECONDARY) for t in wrap_tail(item.secondary, small, room, 1)]
    if len(wrap(item.text, main, room)) > 2:  # a long caption: a size smaller before cutting it
        main = font(max(layout.secondary_px, 12, int(layout.subtitle_px * 0.85)), bold=True)
    return lines + [(t, main, TEXT) for t in balance(wrap_tail(item.text, main, room, 2), main, room)]


def balance(lines: list[str], face, width: float) -> list[str]:
    """Two lines of about equal length rather than a full one and a word or two (as subtitles are
    set): the narrowest width that still wraps them into two lines."""
    if len(lines) != 2 or lines[0].startswith(ELLIPSIS):
        return lines
    text = " ".join(lines)
    low, high = width / 2, width
    while high - low > 4:
        mid = (low + high) / 2
        if len(wrap(text, face, mid)) <= 2:
            high = mid
        else:
            low = mid
    return wrap(text, face, high)


def render_subtitle(item: Subtitle, layout: Layout) -> Image.Image | None:
    lines = subtitle_lines(item, layout)
    return _boxed_lines(lines, layout) if lines else None


def render_chat(item: Chat, layout: Layout) -> Image.Image | None:
    if not item.text.strip():
        return None
    face, bold = font(layout.chat_px), font(layout.chat_px, bold=True)
    pad = layout.pad
    room = layout.chat_width - 2 * pad
    user = fit_line(item.user, bold, room / 2) + ": "
    indent = text_width(user, bold)
    # the first line starts after the name
    lines = clip_lines(wrap(item.text, face, room, first=room - indent), face, room, 2)
    line_h = _line_height(face)
    widths = [indent + text_width(lines[0], face)] + [text_width(l, face) for l in lines[1:]]
    width = int(np.ceil(max(widths))) + 2 * pad
    height = line_h * len(lines) + pad
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=layout.radius, fill=BOX)
    draw.text((pad, pad // 2), user, font=bold, fill=CHAT_USER)
    draw.text((pad + indent, pad // 2), lines[0], font=face, fill=TEXT)
    for i, line in enumerate(lines[1:], 1):
        draw.text((pad, pad // 2 + i * line_h), line, font=face, fill=TEXT)
    return image


def render_badge(item: Badge, layout: Layout) -> Image.Image:
    pad, width = layout.pad, layout.badge_width
    title_f, label_f, small_f = font(layout.small_px, bold=True), font(layout.label_px, bold=True), font(layout.small_px)
    accent = ALERT if item.alert else ACCENT
    inner = width - 2 * pad
    # measure, then draw
    title_h = _line_height(title_f) if item.title else 0
    label_h = _line_height(label_f)
    bar_h = layout.bar_px + pad // 2 if item.score is not None else 0
    row_h = _line_height(small_f) + max(1, pad // 3)
    height = pad + title_h + label_h + bar_h + row_h * len(item.rows) + pad
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=layout.radius, fill=ALERT_BOX if item.alert else BOX)
    draw.rectangle((0, layout.radius, max(2, layout.pad // 2) - 1, height - 1 - layout.radius), fill=accent)
    y = pad
    if item.title:
        draw.text((pad, y), fit_line(item.title.upper(), title_f, inner), font=title_f, fill=MUTED)
        y += title_h
    percent = f"{item.score:.0%}" if item.score is not None else ""
    percent_w = text_width(percent, label_f) + (pad if percent else 0)
    draw.text((pad, y), fit_line(item.label, label_f, inner - percent_w), font=label_f, fill=TEXT)
    if percent:
        draw.text((width - pad, y), percent, font=label_f, fill=TEXT, anchor="ra")
    y += label_h
    if item.score is not None:
        _bar(draw, pad, y, inner, layout.bar_px, item.score, accent)
        y += bar_h
    if item.rows:
        name_w = max(text_width(name, small_f) for name, _, _ in item.rows) + pad
        for name, label, score in item.rows:
            draw.text((pad, y), name, font=small_f, fill=MUTED)
            room = inner - name_w
            # the row's bar where it leaves room for the label (narrow badges: the label only)
            bar_w = int(min(inner * 0.25, room - text_width(label, small_f) - pad)) if score is not None else 0
            if bar_w >= 3 * layout.bar_px:
                room -= bar_w + pad
            draw.text((pad + name_w, y), fit_line(label, small_f, room), font=small_f, fill=TEXT)
            if bar_w >= 3 * layout.bar_px:
                bar_y = y + (_line_height(small_f) - layout.bar_px) // 2
                _bar(draw, width - pad - bar_w, bar_y, bar_w, max(2, layout.bar_px - 1), score, accent)
            y += row_h
    return image


def _bar(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, height: int, value: float, colour) -> None:
    value = min(max(float(value), 0.0), 1.0) if np.isfinite(value) else 0.0
    radius = height // 2
    draw.rounded_rectangle((x, y, x + width - 1, y + height - 1), radius=radius, fill=TRACK)
    filled = int(round(width * value))
    if filled >= 2:
        draw.rounded_rectangle((x, y, x + filled - 1, y + height - 1), radius=radius, fill=colour)


RENDER = {Subtitle: render_subtitle, Badge: render_badge, Chat: render_chat}
# Fonts are shared by every session's video track, each composed on a worker thread, and a
# FreeType face is only safe in one thread at a time: text is rendered under this lock (rarely:
# only when an item is new).
_FONT_LOCK = threading.Lock()


# --- the overlay of one video track --------------------------------------------------------------
class Overlay:
    """Draws items on frames, keeping the sprites of the items shown and of a few more recent ones
    (per frame size)."""

    def __init__(self, spare: int = 4):
        self.spare = spare  # sprites kept beyond those of the last frame
        self._sprites: OrderedDict[tuple, Sprite | None] = OrderedDict()
        self._layouts: dict[tuple[int, int], Layout] = {}

    def layout(self, width: int, height: int) -> Layout:
        key = (width, height)
        if key not in self._layouts:
            if len(self._layouts) > 8:
                self._layouts.clear()
            self._layouts[key] = Layout(width, height)
        return self._layouts[key]

    def sprite(self, item: Item, layout: Layout) -> Sprite | None:
        key = (item, layout.width, layout.height)
        if key in self._sprites:
            self._sprites.move_to_end(key)
            return self._sprites[key]
        with _FONT_LOCK:
            rendered = RENDER[type(item)](item, layout)
        sprite = Sprite(rendered) if rendered is not None else None
        self._sprites[key] = sprite
        return sprite

    def ready(self, items: Iterable[Item], now: float, width: int, height: int) -> bool:
        """Whether drawing ``items`` on an I420 picture of this size renders nothing new (every
        sprite made, with its I420 form): a blend only, cheap enough for the event loop."""
        for item, _ in self.state(items, now):
            sprite = self._sprites.get((item, width, height), False)
            if sprite is False or (sprite is not None and not sprite.has_i420):
                return False
        return True

    @staticmethod
    def state(items: Iterable[Item], now: float) -> tuple:
        """What a frame would show: equal states draw equal pictures (for callers' caches)."""
        return tuple((item, level) for item in items if (level := opacity(item, now)) > 0)

    def draw(self, image: np.ndarray | tuple, items: Iterable[Item], now: float | None = None,
             i420: bool = False) -> np.ndarray | tuple:
        """Draw the visible ``items`` on ``image``, in place; returns it. The image is BGR, or
        with ``i420`` a YUV 4:2:0 picture (``tracks.sprites``: a decoded frame's own layout,
        stacked or as its three planes)."""
        now = _now() if now is None else now
        shown = self.state(items, now)
        if not shown:
            return image
        height, width = i420_planes(image)[0].shape if i420 else image.shape[:2]
        layout = self.layout(width, height)
        bottom = height - layout.margin
        places = []
        for item, level in shown:  # subtitles: bottom centre, upwards
            if isinstance(item, Subtitle) and (sprite := self.sprite(item, layout)):
                places.append((sprite, (width - sprite.width) // 2, bottom - sprite.height, level))
                bottom -= sprite.height + layout.gap
        for item, level in reversed(shown):  # chat: above the subtitles, newest lowest
            if isinstance(item, Chat) and (sprite := self.sprite(item, layout)):
                places.append((sprite, layout.margin, bottom - sprite.height, level))
                bottom -= sprite.height + layout.gap
        top = layout.margin
        for item, level in shown:  # badges: top-right, top-down
            if isinstance(item, Badge) and (sprite := self.sprite(item, layout)):
                places.append((sprite, width - layout.margin - sprite.width, top, level))
                top += sprite.height + layout.gap
        for sprite, x, y, level in places:
            (sprite.blend_i420 if i420 else sprite.blend)(image, x, y, level)
        while len(self._sprites) > len(shown) + self.spare:  # this frame's were all just used: last
            self._sprites.popitem(last=False)
        return image
