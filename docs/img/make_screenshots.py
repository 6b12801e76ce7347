"""Re-make the report screenshots of docs/reading-a-report.md from a rendered report.

``python docs/img/make_screenshots.py out/quickstart/report.html [out/quickstart-label-free/report.html]`` writes
one PNG per report section (and, given the label-free quickstart's report, its label-free section) into
``docs/img/`` (``report-<section>.png``), each the section alone at a fixed width, cropped to its content and
kept under 300 KB. It needs a headless Chromium (``chromium`` on PATH) and Pillow.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Report sections shown on the page (the ids of traits.report.sections.SECTIONS), with the window height to
#: render each at before cropping.
SECTIONS = {"summary": 1500, "verdict": 1600, "provenance": 1400, "splits": 900, "accuracy": 3400, "shift": 1700,
            "hessian": 2000, "surfaces": 3800, "methods": 1800, "appendix": 3000}
#: Sections shot from a second report, the label-free quickstart's (``audits/quickstart-label-free.yaml``).
LABEL_FREE_SECTIONS = {"label_free": 2600}
WIDTH = 1000
LIMIT = 300_000


def _crop(path: Path) -> None:
    from PIL import Image, ImageChops

    img = Image.open(path).convert("RGB")
    bg = Image.new("RGB", img.size, img.getpixel((img.width - 1, img.height - 1)))
    box = ImageChops.difference(img, bg).getbbox()
    if box:
        img = img.crop((0, max(box[1] - 12, 0), img.width, min(box[3] + 12, img.height)))
    scale = 1.0
    while True:
        out = img if scale == 1.0 else img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        out.save(path, optimize=True)
        if path.stat().st_size >= LIMIT:  # a 256-colour palette keeps text sharp at a third of the size
            out.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size < LIMIT or scale < 0.4:
            return
        scale *= 0.85


def shoot(report: Path, section: str, height: int, out: Path) -> Path:
    html = report.read_text(encoding="utf-8")
    style = ("<style>header.title, footer.colophon {display: none !important}"
             f" main > section:not(#{section}) {{display: none !important}}"
             " body {margin-top: 0 !important; padding-top: 8px !important}</style></head>")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(html.replace("</head>", style, 1), encoding="utf-8")
        target = out / f"report-{section}.png"
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if browser is None:
            sys.exit("no chromium on PATH")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={WIDTH},{height}", f"--screenshot={target}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
    _crop(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        sys.exit(__doc__)
    shots = [(Path(argv[0]), SECTIONS)] + ([(Path(argv[1]), LABEL_FREE_SECTIONS)] if len(argv) == 2 else [])
    for report, sections in shots:
        for section, height in sections.items():
            path = shoot(report, section, height, HERE)
            print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
