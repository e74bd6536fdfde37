"""invedit.io: reading photos safely, sizing them for a model, and writing files atomically.

Every input file is made here in tmp_path with Pillow/numpy (plus the shipped photos in assets/photos).
"""
from __future__ import annotations

import gc
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from invedit.io import ImageError, atomic_write, load_image, prepare, read_image, save_image, to_uint8, write_text

PHOTOS = Path(__file__).resolve().parents[1] / "assets" / "photos"


# --------------------------------------------------------------------------------------------- helpers
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG with a valid IHDR (correct CRC) claiming w×h RGB pixels, and almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0")) + _chunk(b"IEND", b"")


def _noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _refused(path, **kw) -> str:
    """read_image must raise ImageError naming the file; return the message."""
    with pytest.raises(ImageError) as excinfo:
        read_image(path, **kw)
    msg = str(excinfo.value)
    assert str(path) in msg
    return msg


def _rgb(path, **kw) -> tuple[np.ndarray, list[str]]:
    image, notes = read_image(path, **kw)
    assert image.mode == "RGB"
    return np.asarray(image), notes


def _has(notes, *words) -> bool:
    return any(all(w in n for w in words) for n in notes)


# ------------------------------------------------------------------------------------------ bad input
def test_missing_file(tmp_path):
    assert "no such file" in _refused(tmp_path / "nope.png")


def test_directory(tmp_path):
    (tmp_path / "dir.png").mkdir()
    assert "not a file" in _refused(tmp_path / "dir.png")


def test_text_file_renamed_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n")
    msg = _refused(path)
    assert "not an image" in msg and "JPEG" in msg and "PNG" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert "not an image" in _refused(path)


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_file(tmp_path, fmt, suffix):
    full = tmp_path / f"full{suffix}"
    Image.fromarray(_noise(64, 48)).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(cut) as im:  # the trap: the header alone opens fine, decoding fails later
        assert im.size == (64, 48)
    msg = _refused(cut)
    assert "truncated" in msg or "damaged" in msg
    assert read_image(full)[0].size == (64, 48)  # the uncut file is fine


def test_failed_decode_closes_the_file(tmp_path):
    data = (tmp_path / "full.png")
    Image.fromarray(_noise(64, 48)).save(data)
    cut = tmp_path / "cut.png"
    cut.write_bytes(data.read_bytes()[:300])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError):
            read_image(cut)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # A 5000×5000 header with no real pixel data: decoding it would fail as "truncated".
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(5000, 5000))
    msg = _refused(path, max_pixels=1_000_000)
    assert "5000×5000" in msg and "limit" in msg and "truncated" not in msg
    assert "25 megapixels" in msg and "1 MP" in msg
    assert "truncated" in _refused(path, max_pixels=30_000_000)  # under the limit, it does get decoded


def test_pixel_limit_never_calls_load(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(_noise(100, 100)).save(path)

    def no_decoding(self):
        raise AssertionError("load() called before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    msg = _refused(path, max_pixels=9_999)
    assert "100×100" in msg and "0.01 MP" in msg  # a small limit is still written readably, not "0 MP"


def test_pixel_limit_boundary(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(_noise(100, 100)).save(path)
    assert read_image(path, max_pixels=10_000)[0].size == (100, 100)
    _refused(path, max_pixels=9_999)


def test_decompression_bomb_header(tmp_path):
    path = tmp_path / "bomb.png"  # 10^10 pixels claimed in a 60-byte file: Pillow's own guard fires at open
    path.write_bytes(_png_header_only(100_000, 100_000))
    msg = _refused(path, max_pixels=10**11)
    assert "bomb" in msg or "limit" in msg
    _refused(path)  # and with the default limit


@pytest.mark.parametrize("w, h", [(0, 10), (10, 0), (0, 0)])
def test_zero_size_png(tmp_path, w, h):
    path = tmp_path / f"zero_{w}x{h}.png"
    path.write_bytes(_png_header_only(w, h))
    msg = _refused(path)
    # Pillow 13 refuses to identify a PNG with a zero dimension, so the message is "not an image";
    # a format that did open it would hit our own "empty" check.
    assert "empty" in msg or "not an image" in msg


@pytest.mark.parametrize("fmt, suffix", [("ICO", ".ico"), ("PCX", ".pcx"), ("PPM", ".ppm"), ("TGA", ".tga")])
def test_format_outside_the_allowed_list(tmp_path, fmt, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(_noise(16, 16)).save(path, format=fmt)
    with Image.open(path) as im:  # Pillow itself reads it: the refusal is ours
        assert im.format == fmt
    msg = _refused(path)
    assert "not an image in a supported format" in msg


def test_suffix_does_not_matter(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    a = _noise(20, 10)
    Image.fromarray(a).save(path, format="PNG")
    got, _ = _rgb(path)
    np.testing.assert_array_equal(got, a)  # read by content, losslessly


# ----------------------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("orientation, top, bottom", [(6, 0, 2), (8, 2, 0)])
def test_exif_orientation(tmp_path, orientation, top, bottom):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20, 0] = 255  # stored left half red
    a[:, 20:, 2] = 255  # stored right half blue
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    im.save(path, exif=exif, quality=95)
    got, notes = _rgb(path)
    assert got.shape == (40, 20, 3)  # W and H swapped
    # 6 = rotate 90° clockwise to display: the stored left becomes the top; 8 = counter-clockwise
    assert got[5, 10].argmax() == top and got[35, 10].argmax() == bottom
    assert _has(notes, "EXIF orientation", str(orientation))


def test_no_exif_no_orientation_note(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.fromarray(_noise(40, 20)).save(path)
    got, notes = _rgb(path)
    assert got.shape == (20, 40, 3) and notes == []


def test_rgba_composited_on_white(tmp_path):
    a = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(a, "RGBA").save(path)
    got, notes = _rgb(path)
    assert got[0, 0].tolist() == [255, 255, 255]  # fully transparent → the white background
    assert got[0, 1].tolist() == [10, 20, 30]  # opaque → unchanged
    assert np.all(np.abs(got[0, 2].astype(int) - 127) <= 1)  # half-transparent black over white
    assert _has(notes, "transparency", "white")


def test_opaque_rgba_has_no_transparency_note(tmp_path):
    path = tmp_path / "opaque.png"
    Image.fromarray(np.full((3, 3, 4), 255, np.uint8), "RGBA").save(path)
    got, notes = _rgb(path)
    assert np.all(got == 255) and not _has(notes, "transparency")


def test_la_composited_on_white(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA").save(path)
    got, notes = _rgb(path)
    assert got[0, 0].tolist() == [255] * 3 and got[0, 1].tolist() == [50] * 3
    assert _has(notes, "transparency")


def _palette_image() -> Image.Image:
    im = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    im.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    return im


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "p.png"
    _palette_image().save(path)
    got, notes = _rgb(path)
    assert got[0].tolist() == [[0, 0, 0], [200, 10, 10], [10, 200, 10]]
    assert not _has(notes, "transparency")


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency(tmp_path, suffix):
    path = tmp_path / f"pt{suffix}"
    _palette_image().save(path, transparency=0)
    got, notes = _rgb(path)
    assert got[0].tolist() == [[255, 255, 255], [200, 10, 10], [10, 200, 10]]  # index 0 → white
    assert _has(notes, "transparency", "white")


def test_grayscale(tmp_path):
    path = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L").save(path)
    got, notes = _rgb(path)
    assert got[0].tolist() == [[0] * 3, [77] * 3, [255] * 3]
    assert _has(notes, "L", "RGB")


def test_grayscale_colour_key_transparency(tmp_path):
    path = tmp_path / "lt.png"
    Image.fromarray(np.array([[10, 77]], np.uint8), "L").save(path, transparency=10)
    got, notes = _rgb(path)
    assert got[0].tolist() == [[255] * 3, [77] * 3]  # the keyed grey is transparent → white, like RGBA
    assert _has(notes, "transparency")


def test_one_bit(tmp_path):
    path = tmp_path / "bw.png"
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(path)
    got, _ = _rgb(path)
    assert got[0].tolist() == [[0] * 3, [255] * 3]


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 32768, 65535, 257 * 64]], np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
        assert np.asarray(im.convert("RGB"))[0, 1, 0] == 255  # the trap this guards against
    got, notes = _rgb(path)
    assert got[0, :, 0].tolist() == [0, 128, 255, 64]
    assert np.all(got[..., 0] == got[..., 2])
    assert _has(notes, "I;16", "8 bits")


def test_dark_16_bit_png_is_still_16_bit(tmp_path):
    # every value ≤ 255 of 65535: nearly black, not to be mistaken for an 8-bit image
    path = tmp_path / "dark16.png"
    Image.fromarray(np.array([[0, 200, 255]], np.uint16)).save(path)
    got, _ = _rgb(path)
    assert got[0, :, 0].tolist() == [0, 1, 1]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    got, notes = _rgb(path)
    assert got.shape == (8, 16, 3)
    assert np.all(np.abs(got.astype(int) - [255, 0, 0]) <= 8)
    assert _has(notes, "CMYK", "RGB")


def test_animated_gif_uses_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    got, notes = _rgb(path)
    assert got.shape == (8, 10, 3) and np.all(got == [255, 0, 0])
    assert _has(notes, "animated", "first of 3 frames")


def test_single_frame_gif_has_no_animation_note(tmp_path):
    path = tmp_path / "still.gif"
    Image.new("RGB", (10, 8), (0, 0, 255)).save(path)
    got, notes = _rgb(path)
    assert np.all(got == [0, 0, 255]) and not _has(notes, "animated")


@pytest.mark.parametrize("fmt, suffix", [("WEBP", ".webp"), ("TIFF", ".tif"), ("BMP", ".bmp")])
def test_other_allowed_formats_lossless(tmp_path, fmt, suffix):
    a = _noise(12, 9)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(a).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    got, _ = _rgb(path)
    np.testing.assert_array_equal(got, a)


# ------------------------------------------------------------------------------------------- geometry
def test_pad_to_multiple_and_exact_round_trip():
    a = _noise(90, 70)
    p = prepare(Image.fromarray(a), multiple=64)
    assert p.pixels.shape == (1, 3, 128, 128) and p.pixels.dtype == torch.float32
    assert p.box == (0, 0, 90, 70) and p.fit == "pad"
    assert p.original_size == p.resized_size == (90, 70)
    assert float(p.pixels.min()) >= -1 and float(p.pixels.max()) <= 1
    assert p.content(p.pixels).shape == (1, 3, 70, 90)
    np.testing.assert_array_equal(to_uint8(p.content(p.pixels)[0]), a)
    restored = p.restore(p.pixels)
    assert restored.size == (90, 70)
    np.testing.assert_array_equal(np.asarray(restored), a)
    assert _has(p.notes, "padded by reflection", "90×70", "128×128", "64")


def test_pad_is_a_reflection():
    a = _noise(90, 70)
    px = to_uint8(prepare(Image.fromarray(a), multiple=64).pixels[0])
    np.testing.assert_array_equal(px[:70, 90], a[:, 88])  # numpy "reflect": mirrored about the last column
    np.testing.assert_array_equal(px[70, :90], a[68])
    np.testing.assert_array_equal(px[:70, 127], a[:, 90 - 38 - 1])


def test_content_works_on_a_batch():
    p = prepare(Image.fromarray(_noise(90, 70)), multiple=64)
    batch = p.pixels.repeat(3, 1, 1, 1)
    assert p.content(batch).shape == (3, 3, 70, 90)


def test_exact_multiple_is_untouched():
    a = _noise(128, 64)
    p = prepare(Image.fromarray(a), multiple=64)
    assert p.pixels.shape == (1, 3, 64, 128) and p.box == (0, 0, 128, 64) and p.notes == ()
    np.testing.assert_array_equal(to_uint8(p.pixels[0]), a)


def test_notes_are_carried_over():
    p = prepare(Image.fromarray(_noise(64, 64)), multiple=64, notes=("from the file",), source="x.png")
    assert p.notes == ("from the file",) and p.source == "x.png"


def test_max_side_downscales_preserving_aspect():
    a = np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (100, 1, 3))  # a smooth ramp
    p = prepare(Image.fromarray(a), multiple=16, max_side=64)
    assert p.original_size == (200, 100) and p.resized_size == (64, 32)
    assert p.pixels.shape == (1, 3, 32, 64) and p.box == (0, 0, 64, 32)
    assert _has(p.notes, "resized from 200×100 to 64×32", "max side 64")
    restored = p.restore(p.pixels)
    assert restored.size == (200, 100)
    assert np.abs(np.asarray(restored).astype(int) - a).mean() < 4  # a ramp survives down and up again


def test_max_side_rounds_and_then_pads():
    p = prepare(Image.fromarray(_noise(90, 70)), multiple=16, max_side=45)
    assert p.resized_size == (45, 35) and p.pixels.shape == (1, 3, 48, 48) and p.box == (0, 0, 45, 35)
    assert p.restore(p.pixels).size == (90, 70)


def test_max_side_not_applied_to_small_images():
    p = prepare(Image.fromarray(_noise(40, 30)), multiple=8, max_side=64)
    assert p.resized_size == (40, 30) and not _has(p.notes, "resized")


def test_crop_centre_to_multiple():
    a = _noise(90, 70)
    p = prepare(Image.fromarray(a), multiple=32, fit="crop")
    assert p.pixels.shape == (1, 3, 64, 64) and p.fit == "crop" and p.box == (0, 0, 64, 64)
    top, left = (70 - 64) // 2, (90 - 64) // 2
    np.testing.assert_array_equal(to_uint8(p.pixels[0]), a[top:top + 64, left:left + 64])
    assert _has(p.notes, "centre-cropped from 90×70 to 64×64")
    assert p.restore(p.pixels).size == (64, 64)  # a crop cannot be undone: restore gives the cropped size


def test_crop_smaller_than_multiple_falls_back_to_pad():
    a = _noise(40, 70)
    p = prepare(Image.fromarray(a), multiple=64, fit="crop")
    assert p.fit == "pad" and p.pixels.shape == (1, 3, 128, 64) and p.box == (0, 0, 40, 70)
    np.testing.assert_array_equal(to_uint8(p.content(p.pixels)[0]), a)


@pytest.mark.parametrize("w, h", [(5, 3), (1, 1), (16, 2)])
def test_image_smaller_than_multiple_is_edge_padded(w, h):
    a = _noise(w, h)
    p = prepare(Image.fromarray(a), multiple=16)
    assert p.pixels.shape == (1, 3, 16, 16) and p.box == (0, 0, w, h)
    px = to_uint8(p.pixels[0])
    np.testing.assert_array_equal(px[:h, :w], a)
    np.testing.assert_array_equal(px[:h, -1], a[:, -1])  # the last column repeated
    np.testing.assert_array_equal(px[-1, :w], a[-1])  # the last row repeated
    assert _has(p.notes, "padded by repeating the edge")
    np.testing.assert_array_equal(np.asarray(p.restore(p.pixels)), a)


def test_invalid_fit():
    with pytest.raises(ValueError, match="stretch"):
        prepare(Image.new("RGB", (8, 8)), multiple=8, fit="stretch")


def test_describe_matches_the_tensor():
    p = prepare(Image.fromarray(_noise(90, 70)), multiple=64, max_side=80, source="a.png")
    d = p.describe()
    assert d["tensor_size"] == [128, 64] and d["original_size"] == [90, 70]
    assert d["resized_size"] == [80, 62] and d["content_box"] == [0, 0, 80, 62]
    assert d["source"] == "a.png" and d["fit"] == "pad" and d["notes"] == list(p.notes) and len(p.notes) == 2


def test_to_uint8_clamps_and_rounds():
    t = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 5).repeat(3, 1, 1)
    out = to_uint8(t)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 0, 128, 255, 255]


# ---------------------------------------------------------------------------------------------- writes
def _folder(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_save_image_png(tmp_path):
    a = _noise(20, 10)
    out = save_image(tmp_path / "x.png", a)
    assert out == tmp_path / "x.png" and _folder(tmp_path) == ["x.png"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im), a)


@pytest.mark.parametrize("name, fmt", [("x.jpg", "JPEG"), ("x.JPEG", "JPEG"), ("x.webp", "WEBP"),
                                       ("x.bmp", "BMP"), ("x.gif", "GIF"), ("x.tif", "TIFF"), ("x.TIFF", "TIFF"),
                                       ("x.unknown", "PNG")])
def test_save_image_format_from_suffix(tmp_path, name, fmt):
    save_image(tmp_path / name, Image.new("RGB", (4, 4), (9, 9, 9)))
    with Image.open(tmp_path / name) as im:
        assert im.format == fmt
    assert _folder(tmp_path) == [name]


def test_save_image_creates_folders(tmp_path):
    out = save_image(tmp_path / "a" / "b" / "x.png", Image.new("RGB", (4, 4)))
    assert out.is_file()


class _Broken:
    def save(self, fp, format=None):
        Path(fp).write_bytes(b"half an image")
        raise OSError("disk full")


def test_failing_save_leaves_nothing(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        save_image(tmp_path / "x.png", _Broken())
    assert _folder(tmp_path) == []


def test_unwritable_mode_leaves_nothing(tmp_path):
    with pytest.raises(OSError):  # Pillow cannot write RGBA as JPEG
        save_image(tmp_path / "x.jpg", Image.new("RGBA", (4, 4)))
    assert _folder(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_replaces_only_on_success(tmp_path, exc):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp):
        Path(tmp).write_text("partial")
        raise exc("stop")

    with pytest.raises(exc):
        atomic_write(target, fail)
    assert target.read_text() == "old" and _folder(tmp_path) == ["out.txt"]
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new" and _folder(tmp_path) == ["out.txt"]


def test_atomic_write_temp_is_beside_the_target(tmp_path):
    seen = []
    atomic_write(tmp_path / "out.bin", lambda tmp: (seen.append(Path(tmp)), Path(tmp).write_bytes(b"1")))
    assert seen[0].parent == tmp_path and seen[0] != tmp_path / "out.bin" and not seen[0].exists()


def test_atomic_write_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        new = atomic_write(tmp_path / "new.txt", lambda tmp: Path(tmp).write_text("x"))
        assert new.stat().st_mode & 0o777 == 0o644  # follows the umask, not mkstemp's 0600
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        atomic_write(kept, lambda tmp: Path(tmp).write_text("new"))
        assert kept.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    finally:
        os.umask(old)


def test_write_text_utf8_round_trip(tmp_path):
    text = "naïve café — ✓ 日本語 🚀\nline 2\n"
    out = write_text(tmp_path / "r.md", text)
    assert out.read_bytes() == text.encode("utf-8")
    assert out.read_text(encoding="utf-8") == text


# --------------------------------------------------------------------------------------- shipped photos
@pytest.mark.parametrize("name, original, tensor_hw, resized, gray", [
    ("astronaut.png", (256, 256), (64, 64), (64, 64), False),
    ("coffee.jpg", (300, 200), (48, 64), (64, 43), False),
    ("camera.png", (256, 256), (64, 64), (64, 64), True),
])
def test_shipped_photos(name, original, tensor_hw, resized, gray):
    path = PHOTOS / name
    p = load_image(path, multiple=16, max_side=64)
    assert p.pixels.shape == (1, 3, *tensor_hw) and p.pixels.dtype == torch.float32
    assert float(p.pixels.min()) >= -1 and float(p.pixels.max()) <= 1
    assert float(p.pixels.std()) > 0.1  # a real photo, not a flat image
    assert p.source == str(path) and p.original_size == original and p.resized_size == resized
    assert p.box == (0, 0, *resized)
    assert _has(p.notes, f"resized from {original[0]}×{original[1]} to {resized[0]}×{resized[1]}")
    assert _has(p.notes, "padded") == (tensor_hw != resized[::-1])
    assert _has(p.notes, "L converted to RGB") == gray
    if gray:
        assert torch.equal(p.pixels[:, 0], p.pixels[:, 1]) and torch.equal(p.pixels[:, 1], p.pixels[:, 2])
    assert p.restore(p.pixels).size == original
