"""Peer editors for the edit benchmark: diffusers' LEDITS++ and DiffEdit on the same model.

DRAFT
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np


class PeerUnavailable(RuntimeError):
    """A peer editor that cannot run on this model / diffusers; the message quotes the original error."""


@dataclass
class LeditsSettings:
    source_guidance_scale: float = 3.5
    skip: float = 0.15
    edit_threshold: float = 0.9
    edit_warmup_steps: int = 0
    use_source_prompt: bool = True  # invert with the source caption (else "")
    drop_source: bool = False  # only push toward the target, no reverse concept


@dataclass
class DiffEditSettings:
    num_maps_per_mask: int = 10
    mask_encode_strength: float = 0.5
    mask_thresholding_ratio: float = 3.0
    inpaint_strength: float = 0.8
    invert_guidance: float | None = None  # None: the edit's guidance


def _to_pil(image: np.ndarray):
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    return Image.fromarray(image, "RGB")


def _to_uint8(images) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 4:
        arr = arr[0]
    return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)


def _build(cls, components: dict, **extra):
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in components.items() if k in params}
    kwargs.update(extra)
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Peers:
    def __init__(self, model_dir: str):
        import torch
        from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPipeline

        self._torch = torch
        self.calls = 0
        self._counting = 0
        self.ledits_settings = LeditsSettings()
        self.diffedit_settings = DiffEditSettings()
        base = StableDiffusionPipeline.from_pretrained(
            model_dir, safety_checker=None, requires_safety_checker=False, dtype=torch.float32)
        base.to("cpu")
        components = dict(base.components)
        self.unet = components["unet"]
        self.unet.register_forward_hook(self._count)
        self._errors: dict[str, str] = {}

        try:
            from diffusers import LEditsPPPipelineStableDiffusion

            sched = DDIMScheduler.from_config(components["scheduler"].config)
            _patch_add_noise(sched)
            self._ledits = _build(LEditsPPPipelineStableDiffusion, components, scheduler=sched)
        except Exception as exc:  # noqa: BLE001
            self._ledits = None
            self._errors["ledits"] = f"{type(exc).__name__}: {exc}"
        try:
            from diffusers import StableDiffusionDiffEditPipeline

            sched = DDIMScheduler.from_config(components["scheduler"].config)
            inv = DDIMInverseScheduler.from_config(components["scheduler"].config)
            self._diffedit = _build(StableDiffusionDiffEditPipeline, components, scheduler=sched,
                                    inverse_scheduler=inv)
        except Exception as exc:  # noqa: BLE001
            self._diffedit = None
            self._errors["diffedit"] = f"{type(exc).__name__}: {exc}"

    def _count(self, module, args, output):
        self.calls += 1

    def _generator(self, seed: int):
        return self._torch.Generator("cpu").manual_seed(int(seed))

    def ledits(self, image: np.ndarray, source: str, target: str, *, steps: int = 50, guidance: float = 7.5,
               seed: int = 0) -> np.ndarray:
        if self._ledits is None:
            raise PeerUnavailable(f"LEDITS++ could not be built: {self._errors['ledits']}")
        s = self.ledits_settings
        pil = _to_pil(image)
        self.calls = 0
        pipe = self._ledits
        try:
            with self._torch.no_grad():
                pipe.invert(pil, source_prompt=source if s.use_source_prompt else "",
                            source_guidance_scale=s.source_guidance_scale, num_inversion_steps=steps,
                            skip=s.skip, generator=self._generator(seed))
                if s.drop_source:
                    prompts, reverse = [target], [False]
                else:
                    prompts, reverse = [target, source], [False, True]
                out = pipe(editing_prompt=prompts, reverse_editing_direction=reverse,
                           edit_guidance_scale=guidance, edit_threshold=s.edit_threshold,
                           edit_warmup_steps=s.edit_warmup_steps, use_intersect_mask=False,
                           generator=self._generator(seed), output_type="np")
        except Exception as exc:  # noqa: BLE001
            raise PeerUnavailable(f"LEDITS++ failed: {type(exc).__name__}: {exc}") from exc
        return _to_uint8(out.images)

    def diffedit(self, image: np.ndarray, source: str, target: str, *, steps: int = 50, guidance: float = 7.5,
                 seed: int = 0) -> np.ndarray:
        if self._diffedit is None:
            raise PeerUnavailable(f"DiffEdit could not be built: {self._errors['diffedit']}")
        s = self.diffedit_settings
        pil = _to_pil(image)
        self.calls = 0
        pipe = self._diffedit
        try:
            with self._torch.no_grad():
                mask = pipe.generate_mask(image=pil, source_prompt=source, target_prompt=target,
                                          num_maps_per_mask=s.num_maps_per_mask,
                                          mask_encode_strength=s.mask_encode_strength,
                                          mask_thresholding_ratio=s.mask_thresholding_ratio,
                                          num_inference_steps=steps, guidance_scale=guidance,
                                          generator=self._generator(seed))
                self.last_mask = mask
                inv = pipe.invert(prompt=source, image=pil, num_inference_steps=steps,
                                  inpaint_strength=s.inpaint_strength,
                                  guidance_scale=guidance if s.invert_guidance is None else s.invert_guidance,
                                  generator=self._generator(seed)).latents
                out = pipe(prompt=target, mask_image=mask, image_latents=inv, negative_prompt=source,
                           inpaint_strength=s.inpaint_strength, num_inference_steps=steps,
                           guidance_scale=guidance, generator=self._generator(seed), output_type="np")
        except Exception as exc:  # noqa: BLE001
            raise PeerUnavailable(f"DiffEdit failed: {type(exc).__name__}: {exc}") from exc
        return _to_uint8(out.images)


def _patch_add_noise(scheduler) -> None:
    import torch

    original = scheduler.add_noise

    def add_noise(original_samples, noise, timesteps):
        if torch.is_tensor(timesteps) and timesteps.is_floating_point():
            timesteps = timesteps.round().long()
        return original(original_samples, noise, timesteps)

    scheduler.add_noise = add_noise


def load_peers(model_dir: str) -> Peers:
    return Peers(model_dir)


def _scenes(n: int):
    from invedit import shapes

    out = []
    for k in range(n):
        rng = np.random.default_rng(k)
        scene = shapes.sample_scene(rng)
        choices = [c for c in shapes.COLOURS if c not in (scene.colour, scene.background)]
        new = choices[int(rng.integers(len(choices)))]
        out.append((shapes.render(scene, 64), scene.caption,
                    shapes.caption_for(scene.shape, new, scene.background)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/models/shapes-64")
    ap.add_argument("--out", default="/tmp/peers.png")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], help="peer.field=value, e.g. ledits.skip=0.3")
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    from invedit.judge import judge, judge_caption

    peers = load_peers(args.model)
    for item in args.set:
        key, value = item.split("=", 1)
        peer, name = key.split(".")
        obj = peers.ledits_settings if peer == "ledits" else peers.diffedit_settings
        cur = getattr(obj, name)
        setattr(obj, name, (value.lower() in ("1", "true")) if isinstance(cur, bool)
                else type(cur)(value) if cur is not None else float(value))
    print(f"torch threads {torch.get_num_threads()}; {peers.ledits_settings}; {peers.diffedit_settings}")
    rows = []
    stats = {"ledits": [0, 0.0, 0], "diffedit": [0, 0.0, 0]}
    for k, (image, source, target) in enumerate(_scenes(args.n)):
        row = [image]
        for name in ("ledits", "diffedit"):
            t0 = time.perf_counter()
            try:
                out = getattr(peers, name)(image, source, target, steps=args.steps, guidance=args.guidance,
                                           seed=k)
            except PeerUnavailable as exc:
                print(f"{name}: {exc}")
                out = np.zeros_like(image)
                row.append(out)
                continue
            dt = time.perf_counter() - t0
            ok = judge_caption(out, target)
            stats[name][0] += ok
            stats[name][1] += dt
            stats[name][2] += peers.calls
            print(f"scene {k}: {source!r} -> {target!r}: {name} reads {judge(out).caption!r} "
                  f"{'OK' if ok else 'miss'} ({dt:.1f} s, {peers.calls} calls)")
            row.append(out)
        rows.append(np.concatenate(row, axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.out)
    for name, (ok, sec, calls) in stats.items():
        print(f"{name}: {ok}/{args.n} judged as target; {sec / args.n:.2f} s and {calls / args.n:.0f} UNet "
              f"calls per edit")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
