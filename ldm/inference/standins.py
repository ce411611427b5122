"""Synthetic stand-ins for the original example inputs (``inference_images/``).

The original repository ships photos and condition maps that are not part of this one. These
are simple procedural drawings with the same file names, so the example set and the demo run
end to end; drop the real files in ``inference_images/`` to reproduce the original examples.

``python -m ldm.inference.standins [FOLDER]`` (re)writes them (default ``inference_images``).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 256


def _gradient(top, bottom, size=(SIZE, SIZE)) -> Image.Image:
    w, h = size
    t = np.linspace(0, 1, h)[:, None, None]
    arr = (np.array(top)[None, None] * (1 - t) + np.array(bottom)[None, None] * t).repeat(w, 1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def museum() -> Image.Image:
    im = _gradient((200, 190, 170), (150, 140, 120))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 180, SIZE, SIZE], fill=(110, 80, 60))  # floor
    for x0, c in ((30, (40, 60, 120)), (110, (140, 50, 40)), (190, (50, 110, 60))):
        d.rectangle([x0 - 6, 50, x0 + 50, 130], fill=(170, 130, 40))  # frames
        d.rectangle([x0, 56, x0 + 44, 124], fill=c)
    return im


def clock() -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (245, 245, 240))
    d = ImageDraw.Draw(im)
    for cx in (80, 176):
        d.ellipse([cx - 28, 30, cx + 28, 86], fill=(200, 30, 30))  # bells
    d.ellipse([48, 56, 208, 216], fill=(210, 35, 35))
    d.ellipse([64, 72, 192, 200], fill=(255, 255, 250))
    d.line([128, 136, 128, 88], fill=(20, 20, 20), width=6)
    d.line([128, 136, 166, 150], fill=(20, 20, 20), width=4)
    for k in range(12):
        a = k / 12 * 2 * math.pi
        d.ellipse([128 + 54 * math.sin(a) - 3, 136 - 54 * math.cos(a) - 3,
                   128 + 54 * math.sin(a) + 3, 136 - 54 * math.cos(a) + 3], fill=(20, 20, 20))
    return im


def placeholder() -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), (128, 128, 128))


def style_golden() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    v = 0.5 + 0.5 * np.sin(12 * x + 8 * np.sin(6 * y))
    arr = np.stack([180 + 70 * v, 120 + 80 * v, 20 + 40 * v], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def beach() -> Image.Image:
    im = _gradient((120, 180, 235), (200, 225, 245))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 120, SIZE, 170], fill=(30, 110, 170))
    d.rectangle([0, 170, SIZE, SIZE], fill=(225, 200, 150))
    d.ellipse([190, 20, 230, 60], fill=(255, 230, 120))
    return im


def bigben() -> Image.Image:
    im = _gradient((150, 190, 230), (210, 220, 235))
    d = ImageDraw.Draw(im)
    d.rectangle([100, 60, 156, SIZE], fill=(170, 140, 90))
    d.polygon([(96, 60), (160, 60), (128, 10)], fill=(90, 90, 80))
    d.ellipse([108, 80, 148, 120], fill=(240, 235, 210), outline=(40, 40, 40), width=3)
    return im


def _edges(draw_fn, blur: float) -> Image.Image:
    im = Image.new("L", (SIZE, SIZE), 0)
    draw_fn(ImageDraw.Draw(im))
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    return im.convert("RGB")


def hed_man_eat() -> Image.Image:
    def draw(d):
        d.ellipse([98, 30, 158, 90], outline=255, width=3)  # head
        d.line([(128, 90), (128, 170)], fill=255, width=3)  # torso
        d.line([(128, 110), (80, 150), (110, 175)], fill=255, width=3)  # arm to the plate
        d.line([(128, 110), (176, 150)], fill=255, width=3)
        d.rectangle([40, 175, 216, 190], outline=255, width=3)  # table
        d.ellipse([90, 165, 140, 180], outline=255, width=2)  # plate
    return _edges(draw, 1.5)


def canny_robot() -> Image.Image:
    def draw(d):
        d.rectangle([96, 30, 160, 84], outline=255, width=1)
        d.ellipse([108, 46, 122, 60], outline=255, width=1)
        d.ellipse([134, 46, 148, 60], outline=255, width=1)
        d.rectangle([84, 92, 172, 180], outline=255, width=1)
        for x in (60, 172):
            d.rectangle([x, 96, x + 24, 170], outline=255, width=1)
        for x in (100, 136):
            d.rectangle([x, 180, x + 20, 240], outline=255, width=1)
    return _edges(draw, 0)


def normal_tree_building() -> Image.Image:
    arr = np.zeros((SIZE, SIZE, 3), np.float32)
    arr[:] = (0.0, 0.0, 1.0)  # facing the camera
    arr[:, 150:] = (0.6, 0.0, 0.8)  # building side wall
    arr[200:] = (0.0, 0.9, 0.45)  # ground
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    r2 = ((x - 80) ** 2 + (y - 90) ** 2) / 50.0 ** 2
    inside = r2 < 1
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    arr[inside] = np.stack([(x - 80) / 50.0, -(y - 90) / 50.0, nz], -1)[inside]  # tree crown (sphere)
    arr[140:200, 74:86] = (0.0, 0.0, 1.0)
    return Image.fromarray(((arr * 0.5 + 0.5) * 255).astype(np.uint8), "RGB")


def depth_bird() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    depth = 40 + 30 * y / SIZE
    branch = (np.abs(y - (150 + 0.2 * (x - 128))) < 8)
    depth = np.where(branch, 160, depth)
    bird = ((x - 120) / 45.0) ** 2 + ((y - 115) / 28.0) ** 2 < 1
    head = ((x - 165) / 16.0) ** 2 + ((y - 92) / 16.0) ** 2 < 1
    depth = np.where(bird | head, 230, depth)
    return Image.fromarray(depth.astype(np.uint8), "L").convert("RGB")


def sem_ade_living_room() -> Image.Image:
    """Raw ADE20K-style label map ("L", class index per pixel; 0 = other)."""
    im = Image.new("L", (SIZE, SIZE), 1)  # wall
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, SIZE, 30], fill=6)  # ceiling
    d.rectangle([0, 190, SIZE, SIZE], fill=4)  # floor
    d.rectangle([150, 50, 230, 130], fill=9)  # window
    d.rectangle([30, 140, 150, 200], fill=24)  # sofa
    d.rectangle([160, 175, 220, 205], fill=16)  # table
    d.ellipse([10, 80, 50, 150], fill=18)  # plant
    return im


STANDINS = {
    "dalle2_museum.jpg": museum, "clock.png": clock, "placeholder.png": placeholder,
    "style_golden.jpg": style_golden, "beach.jpg": beach, "bigben.jpg": bigben,
    "hed_man_eat.png": hed_man_eat, "canny_robot.png": canny_robot,
    "normal_tree_building.jpg": normal_tree_building, "depth_bird.png": depth_bird,
    "sem_ade_living_room.png": sem_ade_living_room,
}


def write_standins(folder: str = "inference_images", overwrite: bool = False) -> list[str]:
    """Write every stand-in that is not there yet (all of them with ``overwrite``)."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, fn in STANDINS.items():
        path = os.path.join(folder, name)
        if overwrite or not os.path.exists(path):
            im = fn()
            im.save(path, quality=90) if name.endswith(".jpg") else im.save(path, optimize=True)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in write_standins(sys.argv[1] if len(sys.argv) > 1 else "inference_images", overwrite=True):
        print(p)
