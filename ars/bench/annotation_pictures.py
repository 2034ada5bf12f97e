"""One region after each step of ``ars bench annotation``, as one PNG strip per toolset: the
editor's canvas (crop and labels, as the person sees it) screenshotted after every stroke."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

CAPTION_H = 16
GAP = 4


def strips(folder: Path, per_row: int = 6) -> list[Path]:
    """``folder/<mode>/stepNN.png`` into ``folder/annotation_<mode>.png``; the files written."""
    written = []
    for mode_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        steps = sorted(mode_dir.glob("step*.png"))
        if not steps:
            continue
        tiles = [Image.open(p).convert("RGB") for p in steps]
        w = max(t.width for t in tiles)
        h = max(t.height for t in tiles)
        cols = min(per_row, len(tiles))
        rows = (len(tiles) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * (w + GAP), rows * (h + CAPTION_H + GAP)), "#0d1117")
        draw = ImageDraw.Draw(sheet)
        for i, (tile, path) in enumerate(zip(tiles, steps, strict=True)):
            x, y = (i % cols) * (w + GAP), (i // cols) * (h + CAPTION_H + GAP)
            caption = path.stem.split("_", 1)[1] if "_" in path.stem else path.stem
            draw.text((x + 2, y + 2), caption, fill="#c9d1d9")
            sheet.paste(tile, (x, y + CAPTION_H))
        out = folder / f"annotation_{mode_dir.name}.png"
        sheet.save(out, optimize=True)
        written.append(out)
    return written
