"""Digits drawn the ways people draw them, for the tests that read drawings: pen strokes of any
width, slanted either way, anywhere on a canvas of any shape, in a light pencil, or typed in a
font. Dark ink on a light background, as a user's PNG would be."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# Each digit as pen strokes in a unit box (x right, y down): ("line", points...) or
# ("arc", x0, y0, x1, y1, start, end) in PIL's degrees.
STROKES: dict[int, list[tuple]] = {
    0: [("arc", 0, 0, 1, 1, 0, 360)],
    1: [("line", (0.3, 0.2), (0.6, 0), (0.6, 1))],
    2: [("arc", 0, 0, 1, 0.5, 180, 360), ("line", (1, 0.25), (0, 1), (1, 1))],
    3: [("arc", 0, 0, 1, 0.5, 200, 90), ("arc", 0, 0.5, 1, 1, 270, 160)],
    4: [("line", (0.75, 1), (0.75, 0), (0, 0.7), (1, 0.7))],
    5: [("line", (1, 0), (0.1, 0), (0.05, 0.45)), ("arc", 0, 0.35, 1, 1, 200, 150)],
    6: [("arc", 0, 0.4, 1, 1, 0, 360), ("line", (0.05, 0.7), (0.6, 0))],
    7: [("line", (0, 0), (1, 0), (0.35, 1))],
    8: [("arc", 0.1, 0, 0.9, 0.48, 0, 360), ("arc", 0, 0.48, 1, 1, 0, 360)],
    9: [("arc", 0, 0, 1, 0.6, 0, 360), ("line", (0.95, 0.3), (0.6, 1))],
}


@dataclass(frozen=True)
class PenStyle:
    """Pen strokes: the digit's box (left, top, width, height) on a canvas, the pen's width and
    grey, and a slant (the top moves right by `slant` times the height; negative: to the left)."""

    canvas: tuple[int, int] = (200, 200)
    box: tuple[int, int, int, int] = (70, 30, 60, 100)
    width: int = 14
    ink: int = 0
    slant: float = 0.0

    def draw(self, digit: int) -> Image.Image:
        image = Image.new("L", self.canvas, 255)
        pen = ImageDraw.Draw(image)
        left, top, box_w, box_h = self.box

        def at(x: float, y: float) -> tuple[float, float]:
            return left + x * box_w, top + y * box_h

        for kind, *args in STROKES[digit]:
            if kind == "line":
                pen.line([at(*p) for p in args], fill=self.ink, width=self.width, joint="curve")
            else:
                x0, y0, x1, y1, start, end = args
                pen.arc([at(x0, y0), at(x1, y1)], start, end, fill=self.ink, width=self.width)
        if self.slant:
            # output (x, y) samples input (x + slant * (y - centre), y): the top leans right
            centre = top + box_h / 2
            image = image.transform(self.canvas, Image.Transform.AFFINE,
                                    (1, self.slant, -self.slant * centre, 0, 1, 0),
                                    resample=Image.Resampling.BILINEAR, fillcolor=255)
        return image


@dataclass(frozen=True)
class FontStyle:
    """The digit typed in Pillow's built-in font (it ships with Pillow: the same on any machine)
    at `size` points, its top-left corner at `at` on the canvas."""

    size: int = 120
    canvas: tuple[int, int] = (200, 200)
    at: tuple[int, int] = (60, 20)

    def draw(self, digit: int) -> Image.Image:
        image = Image.new("L", self.canvas, 255)
        ImageDraw.Draw(image).text(self.at, str(digit), fill=0,
                                   font=ImageFont.load_default(self.size))
        return image


Style = Callable[[int], Image.Image]

# Held out: no setting was chosen by these (the ones tuned on are in docs/performance.md,
# "Drawn digits").
HELD_OUT_STYLES: dict[str, Style] = {
    "medium pen, centred": PenStyle(width=8).draw,
    "slanted left": PenStyle(width=10, slant=-0.25).draw,
    "wide canvas, low right": PenStyle(canvas=(300, 200), box=(190, 80, 50, 90), width=10).draw,
    "light pencil": PenStyle(width=6, ink=150, box=(40, 40, 70, 120)).draw,
    "small type": FontStyle(size=60, at=(110, 100)).draw,
}


def draw_digit(digit: int, size: int = 200, offset: tuple[int, int] = (30, -20),
               width: int = 14) -> Image.Image:
    """A digit drawn with thick dark strokes on a light square canvas, off-centre."""
    return PenStyle(canvas=(size, size), box=(offset[0] + 40, offset[1] + 50, 60, 100),
                    width=width).draw(digit)
