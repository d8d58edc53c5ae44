"""Draws the app icons (plain PNG, no imaging library): a speech bubble on
the brand colour. `any` icons have rounded corners and a margin; the
maskable one fills the square and keeps the bubble inside the 80 % safe
zone. Run once; the PNGs are committed under public/icons/."""

import struct
import sys
import zlib
from pathlib import Path

BRAND = (21, 94, 117)  # teal 800
BUBBLE = (255, 255, 255)


def png(size, pixel):
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x + 0.5, y + 0.5)) for x in range(size))
        for y in range(size)
    )
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def inside_bubble(u, v):
    """u, v in 0..1 over the bubble's box: an ellipse with a tail at bottom left."""
    ellipse = ((u - 0.5) / 0.5) ** 2 + ((v - 0.42) / 0.42) ** 2 <= 1
    tail = 0.18 <= u <= 0.42 and 0.7 <= v <= 1.0 and (u - 0.18) >= (v - 0.7) * 0.8
    return ellipse or tail


def icon(size, maskable):
    scale = 0.5 if maskable else 0.6
    box = size * scale
    left = (size - box) / 2
    top = (size - box) / 2
    radius = 0 if maskable else size * 0.22

    def pixel(x, y):
        if radius:
            cx = min(max(x, radius), size - radius)
            cy = min(max(y, radius), size - radius)
            if (x - cx) ** 2 + (y - cy) ** 2 > radius ** 2:
                return (0, 0, 0, 0)
        u, v = (x - left) / box, (y - top) / box
        if 0 <= u <= 1 and 0 <= v <= 1 and inside_bubble(u, v):
            dots = any(((u - cx) / 0.07) ** 2 + ((v - 0.42) / 0.07) ** 2 <= 1 for cx in (0.3, 0.5, 0.7))
            return (*BRAND, 255) if dots else (*BUBBLE, 255)
        return (*BRAND, 255)

    return png(size, pixel)


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "icon-192.png").write_bytes(icon(192, maskable=False))
    (out / "icon-512.png").write_bytes(icon(512, maskable=False))
    (out / "maskable-512.png").write_bytes(icon(512, maskable=True))
    (out / "apple-touch-icon.png").write_bytes(icon(180, maskable=True))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "public" / "icons")
