"""The HTML report opens in headless Chromium and its plots render (the screenshot is not blank
and shows the plot colours). Skipped where Chromium is not installed (``apt-get install -y
chromium`` on Debian)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchrunner.cli import main
from batchrunner.report_svg import PALETTE

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and
                 Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw pixel rows) of an 8-bit RGB/RGBA PNG (stdlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def test_html_plots_render_in_chromium(emulator_runs, tmp_path):
    html = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(emulator_runs["stream"]), "--by", "model",
                                       "--html", str(html)], catch_exceptions=False)
    assert result.exit_code == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,1000",
         f"--screenshot={shot}", html.as_uri()],
        capture_output=True, text=True, timeout=90)
    assert shot.exists(), proc.stderr[-2000:]
    width, height, bpp, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (900, 1000)
    colours = Counter(pixels[i:i + 3] for i in range(0, len(pixels), bpp))
    white = colours.get(b"\xff\xff\xff", 0)
    assert white < 0.97 * width * height, "the page is (almost) blank"
    assert len(colours) > 50, "no antialiased text or lines: nothing was drawn"
    # The first plots are CDFs with a legend: its swatches are solid palette colours.
    for hex_colour in PALETTE[:3]:
        rgb = bytes.fromhex(hex_colour[1:])
        assert colours.get(rgb, 0) >= 50, f"plot colour {hex_colour} missing: plots not rendered"
