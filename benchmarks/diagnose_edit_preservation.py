"""Where does an edit lose the region it must keep? A diagnosis on benchmark scenes (direct inversion + P2P).

For each scene of `bench_edit.draw_scene`, its colour and shape swaps run with the default P2P settings, without
and with local blend (the benchmark's blend words), and are measured over the benchmark's keep region (outside the
old shape, or the circumscribed disk, dilated by 3 px):

(a) blend mask: its share of the latent, and the share of the keep region it covers once upsampled (there the
    target may differ from the source);
(b) max |target − source| latent outside the blend mask at the end (0 when the blend is applied);
(c) the source branch: max |ẑ0 − z0| and its decoded PSNR vs the input (is the reconstruction at the ceiling?);
(d) decoder bleed: the latent that is z0 outside the latent cells the true region touches and the edit inside
    them, decoded: the best a latent-space blend with a perfect mask could do; and the same splice with the
    encoded true target image inside (a right change): what the decoder alone spreads outside;
(e) the edit's own loss, split: PSNR if the pixels that differ from the VAE round trip by more than 32 levels
    (a shape drawn bigger or moved) were the round trip's, and PSNR if only those kept the edit (the rest, small
    drift, fixed);
(f) the pixel composite over the reconstruction (`invedit.edit.composite`) at each threshold of --composite.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/diagnose_edit_preservation.py --scenes 20
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/diagnose_edit_preservation.py --first-seed 2000 \
        --scenes 12 --composite 0.1 0.3 0.5 0.7 0.9   # the tuning scenes: what each threshold buys
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_edit import SIZE, Bench, draw_scene, region_psnr  # noqa: E402

from invedit import api, shapes  # noqa: E402
from invedit.edit import EditSettings, composite, edit_latents  # noqa: E402
from invedit.io import prepare, to_uint8  # noqa: E402
from invedit.judge import judge  # noqa: E402

LARGE = 32  # levels: a pixel this far from the VAE round trip is the edit's geometry, not drift
COLUMNS = ("psnr", "ceiling", "success", "mask_latent", "keep_covered", "outside_mask_dz", "source_dz", "source_psnr",
           "oracle_blend_psnr", "true_splice_psnr", "no_large_psnr", "only_large_psnr")  # then composite_psnr@t, composite_success@t


def latent_cells(mask: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) in {0, 1}: the latent cells that touch the pixel mask."""
    return F.adaptive_max_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], hw)[0, 0]


def diagnose(bench: Bench, seed: int, thresholds: list[float]) -> list[dict]:
    scene, edits = draw_scene(seed)
    image = shapes.render(scene, SIZE)
    vae = bench.vae_round_trip(image)
    inv = bench.invert(image, scene.caption, "direct")
    z0, hw = inv.z0, tuple(inv.z0.shape[-2:])
    rows = []
    for edit in edits[:2]:  # colour and shape swaps: the region to keep is outside
        keep, right = edit.keep, lambda a: (lambda v: (v.shape, v.colour, v.background))(judge(a)) == edit.target
        for blend in ((), edit.blend):
            run = edit_latents(bench.model, inv, [edit.caption], replace(EditSettings(), blend=blend),
                               api.replay_options(inv))
            z = run.latents
            with torch.no_grad():
                px = bench.model.decode(z)
            out = to_uint8(px[1])
            row = {"seed": seed, "kind": edit.kind, "blend": bool(blend), "psnr": region_psnr(out, image, keep),
                   "ceiling": region_psnr(vae, image, keep), "success": right(out),
                   "source_dz": float((z[0] - z0[0]).abs().max()),
                   "source_psnr": region_psnr(to_uint8(px[0]), image, keep)}
            if run.mask is not None:  # (a), (b)
                m = run.mask[0].float().cpu()  # (h, w)
                big = F.interpolate(m[None, None], size=(SIZE, SIZE), mode="nearest")[0, 0].numpy() > 0.5
                row.update(mask_latent=float(m.mean()), keep_covered=float((big & keep).sum() / keep.sum()),
                           outside_mask_dz=float(((z[1] - z[0]).abs() * (1 - m)).max()))
            else:  # (d), (e), (f) on the plain P2P edit
                cells = latent_cells(~keep, hw)
                truth = shapes.render(replace(scene, shape=edit.target[0], colour=edit.target[1],
                                              background=edit.target[2]), SIZE)
                with torch.no_grad():
                    oracle = to_uint8(bench.model.decode((z0[0] + cells * (z[1] - z0[0]))[None])[0])
                    z_true = bench.model.encode_image(prepare(Image.fromarray(truth), bench.model.multiple,
                                                              SIZE).pixels)
                    splice = to_uint8(bench.model.decode((z0[0] + cells * (z_true[0] - z0[0]))[None])[0])
                large = (np.abs(out.astype(float) - vae.astype(float)).max(2) > LARGE)[..., None]
                row.update(oracle_blend_psnr=region_psnr(oracle, image, keep),
                           true_splice_psnr=region_psnr(splice, image, keep),
                           no_large_psnr=region_psnr(np.where(large, vae, out), image, keep),
                           only_large_psnr=region_psnr(np.where(large, out, vae), image, keep))
                for t in thresholds:
                    comp = to_uint8(composite(px[1:2], px[:1], t)[0][0])
                    row[f"composite_psnr@{t:g}"], row[f"composite_success@{t:g}"] = (region_psnr(comp, image, keep),
                                                                                    right(comp))
            rows.append(row)
    return rows


def show(r: dict, columns: tuple[str, ...]) -> str:
    return " ".join(f"{k} {r[k]:.3g}" if isinstance(r[k], float) else f"{k} {r[k]}" for k in columns if k in r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--composite", type=float, nargs="+", default=[EditSettings().composite])
    args = p.parse_args()
    columns = COLUMNS + tuple(f"composite_{what}@{t:g}" for t in args.composite for what in ("psnr", "success"))
    torch.set_num_threads(1)
    bench = Bench(api.load(device="cpu"), 50, 7.5, EditSettings())
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.scenes):
        for r in diagnose(bench, seed, args.composite):
            rows.append(r)
            print(f"{seed} {r['kind']:6s} {'blend' if r['blend'] else 'P2P  '} {show(r, columns)}", flush=True)
    print(f"\nmeans over {args.scenes} scenes (seeds {args.first_seed}…{args.first_seed + args.scenes - 1}); "
          f"full-cover = blend masks covering the whole keep region")
    for kind in ("colour", "shape"):
        for blend in (False, True):
            sel = [r for r in rows if r["kind"] == kind and r["blend"] == blend]
            means = {k: float(np.mean([float(r[k]) for r in sel])) for k in columns if k in sel[0]}
            extra = f" full-cover {np.mean([r['keep_covered'] == 1.0 for r in sel]):.2f}" if blend else ""
            print(f"{kind:6s} {'blend' if blend else 'P2P  '} {show(means, columns)}{extra}")


if __name__ == "__main__":
    main()
