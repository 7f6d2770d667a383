"""Text for the overlays (``tracks/overlay.py``): a system TrueType font (DejaVu Sans, else
another), measured widths, and words wrapped to a width, never cut, or cut from the front with
``…`` when lines run out."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

ELLIPSIS = "…"


FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
             "/usr/share/fonts/truetype/liberation", "/Library/Fonts",
             "/System/Library/Fonts/Supplemental", "C:/Windows/Fonts")
FONT_FILES = {False: ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial Unicode.ttf", "Arial.ttf", "arial.ttf"),
              True: ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "Arial Bold.ttf", "arialbd.ttf")}


@lru_cache(maxsize=None)
def font_path(bold: bool = False) -> str | None:
    """A TrueType font of the system (Debian: fonts-dejavu-core), or None for PIL's own (ASCII)."""
    for name in FONT_FILES[bold] + FONT_FILES[False]:
        for folder in FONT_DIRS:
            path = Path(folder) / name
            if path.is_file():
                return str(path)
    return None


@lru_cache(maxsize=64)
def font(px: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    path = font_path(bold)
    return ImageFont.truetype(path, px) if path else ImageFont.load_default(size=px)


def text_width(text: str, face: ImageFont.FreeTypeFont) -> float:
    return face.getlength(text)


@lru_cache(maxsize=4096)
def _word_width(face: ImageFont.FreeTypeFont, word: str) -> float:
    return face.getlength(word)


def _estimate(text: str, face) -> float:
    """The width of a line from its words' widths (kerning across spaces ignored)."""
    words = text.split(" ")
    return sum(_word_width(face, w) for w in words) + _word_width(face, " ") * (len(words) - 1)


def wrap(text: str, face: ImageFont.FreeTypeFont, width: float, first: float | None = None) -> list[str]:
    """Greedy word wrap so that every line is at most ``width`` pixels (the first line at most
    ``first``, where given); a word longer than a line (or text without spaces) is broken
    between characters. Lines are laid out from their words' widths, then measured whole:
    should one not fit after all, everything is wrapped again measuring each candidate."""
    lines = _wrap(text, face, width, first, _estimate)
    if all(text_width(line, face) <= (first if i == 0 and first is not None else width)
           for i, line in enumerate(lines)):
        return lines
    return _wrap(text, face, width, first, text_width)


def _wrap(text: str, face, width: float, first: float | None, measure) -> list[str]:
    lines: list[str] = []
    line = ""
    room = lambda: width if lines or first is None else first  # noqa: E731
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if measure(candidate, face) <= room():
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        while text_width(word, face) > room():  # break the word itself
            cut = _fit_prefix(word, face, room())
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines


def _fit_prefix(text: str, face, width: float) -> int:
    """How many leading characters of ``text`` fit in ``width`` (at least one)."""
    low, high = 1, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if text_width(text[:mid], face) <= width:
            low = mid
        else:
            high = mid - 1
    return low


def wrap_tail(text: str, face, width: float, max_lines: int) -> list[str]:
    """``text`` wrapped to at most ``max_lines``: where it is longer, its end (the newest words
    of a live caption), from a word boundary, after ``…``."""
    lines = wrap(text, face, width)
    if len(lines) <= max_lines:
        return lines
    words = text.split()
    if len(words) == 1:  # one word longer than all the lines: its end
        return lines[-max_lines:]
    low, high = 1, len(words) - 1  # the fewest leading words to drop
    while low < high:
        mid = (low + high) // 2
        if len(wrap(ELLIPSIS + " ".join(words[mid:]), face, width)) <= max_lines:
            high = mid
        else:
            low = mid + 1
    lines = wrap(ELLIPSIS + " ".join(words[low:]), face, width)
    return lines[-max_lines:]  # the last word alone longer than all the lines: its end


def clip_lines(lines: list[str], face, width: float, max_lines: int) -> list[str]:
    """At most ``max_lines``: the first ones, ``…`` at the end, trimmed so each still fits ``width``."""
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    last = kept[-1]
    while last and text_width(last + ELLIPSIS, face) > width:
        last = last[:-1]
    return kept[:-1] + [last.rstrip() + ELLIPSIS]


def fit_line(text: str, face, width: float) -> str:
    """One line: ``text``, or its beginning and ``…``."""
    text = " ".join(text.split())
    if text_width(text, face) <= width:
        return text
    return clip_lines([text[:_fit_prefix(text, face, width)], ""], face, width, 1)[0]
