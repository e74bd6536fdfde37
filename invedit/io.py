"""Reading photos into the tensor a model needs, and writing images back, safely.

Every way a file can be wrong ends in an `ImageError` that names the file and the problem, before
anything is written. The tensor fed to the VAE is sized to the model's multiple without distortion
(padding by reflection, or a centre crop) and every change made on the way is recorded, so that the
output can be restored to the input's size and the report can say what was done.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (a decompression bomb guard)
MAX_WORK_PIXELS = 4096 * 3072  # refuse a larger working size (12.6 MP, a phone photo's): memory grows with it
# (the VAE works in tiles above 4.2 MP, model.adapter.TILE_ABOVE; the UNet's memory still grows with the size)
FITS = ("pad", "crop")


class ImageError(ValueError):
    """A file that cannot be used as an input image; the message names the file and the problem."""


@dataclass(frozen=True)
class Prepared:
    """An image ready for the VAE, and how it was made from the file."""

    pixels: torch.Tensor  # (1, 3, H, W) in [-1, 1], H and W multiples of the model's multiple
    source: str
    original_size: tuple[int, int]  # (W, H) of the file after EXIF orientation
    resized_size: tuple[int, int]  # (W, H) after the max-side limit (equal to original_size if none applied)
    box: tuple[int, int, int, int]  # (left, top, right, bottom) of the content inside `pixels`
    fit: str  # "pad" or "crop"
    notes: tuple[str, ...]  # every conversion made on the way, in words

    def content(self, pixels: torch.Tensor) -> torch.Tensor:
        """The part of a (B, 3, H, W) tensor that holds the image, without padding."""
        left, top, right, bottom = self.box
        return pixels[..., top:bottom, left:right]

    def restore(self, pixels: torch.Tensor) -> Image.Image:
        """A (1, 3, H, W) output in [-1, 1] without padding, at the input's scale.

        Padded inputs come back at the input's exact size; cropped ones as the kept region, scaled back
        by whatever the max-side limit took off.
        """
        image = Image.fromarray(to_uint8(self.content(pixels)[0]))
        scale = self.original_size[0] / self.resized_size[0]
        size = self.original_size if self.fit == "pad" else (round(image.size[0] * scale), round(image.size[1] * scale))
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

    def describe(self) -> dict:
        return {"source": self.source, "original_size": list(self.original_size),
                "resized_size": list(self.resized_size), "tensor_size": [self.pixels.shape[-1], self.pixels.shape[-2]],
                "content_box": list(self.box), "fit": self.fit, "notes": list(self.notes)}


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; 16-bit and float scaled explicitly, alpha composited on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and a.max() <= 1.0 else (255.0 if a.max() <= 255 else 65535.0)
        top = 65535.0 if im.mode.startswith("I;16") else top  # 16 bits whatever the content
        notes.append(f"{im.mode} image scaled from [0, {top:g}] to 8 bits")
        im = Image.fromarray(np.clip(np.round(a / top * 255), 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")  # a palette or colour-key transparency
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparency composited on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":
        if im.mode not in ("RGBA",):
            notes.append(f"{im.mode} converted to RGB")
        im = im.convert("RGB")
    return im


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Open, check and decode an image file into RGB; raise ImageError naming the file on any problem."""
    name = str(path)
    if not Path(name).is_file():
        raise ImageError(f"{name}: no such file" if not Path(name).exists() else f"{name}: is not a file")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            im = Image.open(name, formats=FORMATS)
        with im:  # closes the file even when decoding fails
            w, h = im.size
            if w == 0 or h == 0:
                raise ImageError(f"{name}: the image is empty ({w}×{h} pixels)")
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}×{h} = {w * h / 1e6:.3g} megapixels is above the limit of "
                                 f"{max_pixels / 1e6:.3g} MP: downscale it first (in Python, load_image's max_pixels "
                                 "argument raises the limit)")
            if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":  # MPO: a phone JPEG with a preview
                notes.append(f"animated {im.format}: first of {im.n_frames} frames used")
            im.load()  # a truncated file only fails here (PITFALLS)
            oriented = ImageOps.exif_transpose(im)
            if oriented.size != im.size or im.getexif().get(0x0112, 1) != 1:
                notes.append(f"EXIF orientation {im.getexif().get(0x0112)} applied")
            return _to_rgb(oriented, notes), notes
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image in a supported format ({', '.join(FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: the file is damaged or truncated ({exc})") from None


def prepare(image: Image.Image, multiple: int, max_side: Optional[int] = None, fit: str = "pad",
            source: str = "<image>", notes: tuple[str, ...] = (), max_work_pixels: int = MAX_WORK_PIXELS) -> Prepared:
    """Size an RGB image for a model: optional max-side downscale, then pad (or crop) to `multiple`.

    A working size above `max_work_pixels` is refused before any allocation: the UNet's activations grow with
    it (and its attention, quadratic in the latent's size, in time), whatever the VAE's tiles save."""
    if fit not in FITS:
        raise ValueError(f"fit {fit!r} is not one of {FITS}")
    w0, h0 = image.size
    if max_side and max(w0, h0) > max_side:
        w0, h0 = max(1, round(w0 * max_side / max(w0, h0))), max(1, round(h0 * max_side / max(w0, h0)))
    if w0 * h0 > max_work_pixels:
        side = int((max_work_pixels * max(w0, h0) / min(w0, h0)) ** 0.5)
        raise ImageError(f"{source}: a working size of {w0}×{h0} = {w0 * h0 / 1e6:.3g} MP is above the working "
                         f"budget of {max_work_pixels / 1e6:.3g} MP (memory grows with it): pass --max-side "
                         f"{side // multiple * multiple} or less")
    notes = list(notes)
    original = image.size
    if max_side and max(original) > max_side:
        scale = max_side / max(original)
        size = (max(1, round(original[0] * scale)), max(1, round(original[1] * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        notes.append(f"resized from {original[0]}×{original[1]} to {size[0]}×{size[1]} (max side {max_side})")
    a = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3) in [-1, 1]
    h, w = a.shape[:2]
    if fit == "crop" and h >= multiple and w >= multiple:
        H, W = h // multiple * multiple, w // multiple * multiple
        top, left = (h - H) // 2, (w - W) // 2
        a = a[top:top + H, left:left + W]
        box = (0, 0, W, H)
        if (H, W) != (h, w):
            notes.append(f"centre-cropped from {w}×{h} to {W}×{H} (multiple of {multiple})")
    else:
        H, W = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        pad = ((0, H - h), (0, W - w), (0, 0))
        mode = "reflect" if H - h < h and W - w < w else "edge"  # reflection needs pad < size
        a = np.pad(a, pad, mode=mode)
        box = (0, 0, w, h)
        if (H, W) != (h, w):
            how = "reflection" if mode == "reflect" else "repeating the edge"
            notes.append(f"padded by {how} from {w}×{h} to {W}×{H} (multiple of {multiple})")
        fit = "pad"
    pixels = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return Prepared(pixels, source, original, image.size, box, fit, tuple(notes))


def load_image(path: str | os.PathLike, multiple: int, max_side: Optional[int] = None, fit: str = "pad",
               max_pixels: int = MAX_PIXELS) -> Prepared:
    image, notes = read_image(path, max_pixels)
    return prepare(image, multiple, max_side, fit, str(path), tuple(notes))


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] → (H, W, 3) uint8."""
    a = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return a.permute(1, 2, 0).numpy().astype(np.uint8)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write, suffix: str = ".tmp") -> Path:
    """Call write(tmp_path) on a temporary file in the target's folder, then rename it into place.

    A crash or an error leaves no half-written output (DESIGN §6). `suffix` ends the temporary name,
    for writers that pick a format by extension (OpenCV's video writer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)  # mkstemp makes 0600: keep the old file's mode, or follow the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def output_set(out: str | os.PathLike) -> Iterator[Path]:
    """Write a command's outputs into a hidden staging folder inside `out`, moved into place only when every
    one of them is complete: an error (or a kill) before that leaves `out` as it was, and a folder of outputs
    (interpolation frames) replaces the old one whole, so no stale frame of an earlier run survives.

        with output_set(out) as stage:
            save_image(stage / "a.png", ...)        # then out/a.png exists, beside the other outputs
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _sweep_dead_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=f".invedit-staging-{os.getpid()}-", dir=out))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            target = out / item.name
            if target.is_symlink():
                target.unlink()  # never write through a link the user (or an attacker) left in --out
            if item.is_dir() and target.is_dir():
                old = Path(tempfile.mkdtemp(prefix=f".invedit-old-{os.getpid()}-", dir=out))
                target.rename(old / item.name)
                item.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _sweep_dead_stages(out: Path) -> None:
    """Remove the staging folders of runs that were killed (their process is gone) before they finished."""
    for item in out.glob(".invedit-*-*-*"):
        try:
            pid = int(item.name.split("-")[2])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(item, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def moved(paths: dict[str, Path], stage: Path, out: str | os.PathLike) -> dict[str, Path]:
    """The final places of outputs written under `stage` by `output_set`."""
    return {k: Path(out) / Path(p).relative_to(stage) for k, p in paths.items()}


def save_image(path: str | os.PathLike, image: Image.Image | np.ndarray, format: Optional[str] = None) -> Path:
    """Write an image atomically; the format comes from the suffix unless given."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    fmt = format or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF",
                     ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}.get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_gif(path: str | os.PathLike, frames: list[Image.Image], fps: float = 8.0, bounce: bool = True) -> Path:
    """An animated GIF, looping; with `bounce` it plays forwards then backwards."""
    seq = list(frames) + (list(frames[-2:0:-1]) if bounce and len(frames) > 2 else [])
    return atomic_write(path, lambda tmp: seq[0].save(tmp, format="GIF", save_all=True, append_images=seq[1:],
                                                      duration=round(1000 / fps), loop=0))


def save_mp4(path: str | os.PathLike, frames: list[Image.Image], fps: float = 8.0, min_side: int = 256) -> Path:
    """An MP4 (OpenCV's mp4v codec); small frames are enlarged by pixel repetition to `min_side`."""
    import cv2

    w, h = frames[0].size
    scale = max(1, -(-min_side // min(w, h)))

    def write(tmp: str) -> None:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w * scale, h * scale))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write MP4 video to {path}")
        for frame in frames:
            big = np.repeat(np.repeat(np.asarray(frame.convert("RGB")), scale, 0), scale, 1)
            writer.write(cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
        writer.release()

    return atomic_write(path, write, suffix=".tmp.mp4")


def contact_sheet(frames: list[Image.Image], labels: list[str], columns: int = 8, min_side: int = 128) -> Image.Image:
    """Frames in a grid, each enlarged by pixel repetition to at least `min_side` and labelled below."""
    import cv2

    w, h = frames[0].size
    scale = max(1, -(-min_side // min(w, h)))
    tw, th, label_h = w * scale, h * scale, 16
    rows = -(-len(frames) // columns)
    sheet = np.full((rows * (th + label_h), min(columns, len(frames)) * tw, 3), 255, np.uint8)
    for k, (frame, label) in enumerate(zip(frames, labels)):
        r, c = divmod(k, columns)
        y, x = r * (th + label_h), c * tw
        sheet[y:y + th, x:x + tw] = np.repeat(np.repeat(np.asarray(frame.convert("RGB")), scale, 0), scale, 1)
        cv2.putText(sheet, label, (x + 3, y + th + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return Image.fromarray(sheet)
