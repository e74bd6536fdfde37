"""The report page of a recipe run: one self-contained HTML file (no CDN, no network) beside summary.json.

A header with the recipe, model, versions and totals; a row per task with its status, the figures that
matter (PSNR of a reconstruction, what an edit kept), and its pictures as thumbnails linked to the full
files (paths relative to the page, so the folder can be moved or zipped). Columns sort on a click.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Mapping

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f2f2f2;cursor:pointer;user-select:none}th:hover{background:#e4e4e4}
img{height:96px;image-rendering:pixelated;margin:2px;border:1px solid #ddd}
.failed{background:#fdecea}.num{text-align:right;font-variant-numeric:tabular-nums}
"""
_LOADED = """
window.addEventListener('load', () => {  // for checks in a real browser: how many pictures decoded
  const imgs = [...document.images], ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""
_SORT = """
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = [...body.rows];
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  const key = r => { const c = r.cells[col]; const v = c.dataset.value ?? c.textContent.trim();
                     const n = parseFloat(v); return isNaN(n) ? v : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); const s = x < y ? -1 : x > y ? 1 : 0;
                        return dir === 'asc' ? s : -s; });
  rows.forEach(r => body.appendChild(r));
}));
"""
COLUMNS = ("task", "status", "PSNR vs input", "PSNR vs VAE", "kept outside (dB)", "seconds", "pictures")


def _figures(row: Mapping[str, Any]) -> tuple[float, float, float]:
    """(reconstruction PSNR vs input, vs the VAE round trip, mean PSNR an edit kept), NaN where absent."""
    f = row.get("figures") or {}
    metrics = f.get("metrics") or {}
    vs_input = (metrics.get("reconstruction_vs_input") or {}).get("psnr", math.nan)
    vs_vae = (metrics.get("reconstruction_vs_vae") or {}).get("psnr", math.nan)
    kept = [e["kept"]["vs_input"]["psnr"] for e in f.get("edits", []) if isinstance(e.get("kept"), dict)]
    kept = [float(k) for k in kept if isinstance(k, (int, float)) or k in ("inf",)]
    return float(vs_input), float(vs_vae), (sum(kept) / len(kept) if kept else math.nan)


def _num(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return '<td class="num" data-value="">—</td>'
    if math.isnan(v):
        return '<td class="num" data-value="">—</td>'
    text = "inf" if math.isinf(v) else f"{v:.2f}"
    return f'<td class="num" data-value="{1e9 if math.isinf(v) else v}">{text}</td>'


def _pictures(row: Mapping[str, Any], page_dir: Path) -> str:
    links = []
    for kind, path in (row.get("paths") or {}).items():
        p = Path(path)
        pictures = sorted(p.glob("*.png"))[:4] if p.is_dir() else ([p] if p.suffix == ".png" else [])
        for picture in pictures:
            rel = html.escape(os.path.relpath(picture, page_dir))
            links.append(f'<a href="{rel}"><img src="{rel}" alt="{html.escape(kind)}" title="{html.escape(kind)}"></a>')
    return "<td>" + "".join(links) + "</td>"


def render(summary: Mapping[str, Any], page: Path) -> str:
    """The page for `summary` (runner.run_recipe's), to be written at `page`."""
    model, counts = summary.get("model", {}), summary.get("counts", {})
    versions = model.get("versions", {})
    head = (f"<h1>invedit recipe: {html.escape(str(summary.get('recipe')))}</h1>"
            f"<p>model {html.escape(str(model.get('model')))} (fingerprint {html.escape(str(model.get('fingerprint')))}),"
            f" {html.escape(str(model.get('device')))}, {html.escape(str(model.get('dtype')))}; invedit "
            f"{html.escape(str(summary.get('invedit')))}, torch {html.escape(str(versions.get('torch')))}, diffusers "
            f"{html.escape(str(versions.get('diffusers')))}</p>"
            f"<p>{counts.get('done', 0)} done, {counts.get('done earlier', 0)} done earlier, "
            f"{counts.get('failed', 0)} failed; {len(summary.get('items', []))} inputs; "
            f"{float(summary.get('seconds', 0)):.1f} s</p>")
    rows = []
    for row in summary.get("tasks", []):
        vs_input, vs_vae, kept = _figures(row)
        status = html.escape(str(row.get("status")))
        error = f"<br><small>{html.escape(str(row['error']))}</small>" if row.get("error") else ""
        rows.append(f'<tr class="{"failed" if row.get("status") == "failed" else ""}">'
                    f"<td>{html.escape(str(row.get('task')))}</td><td>{status}{error}</td>"
                    f"{_num(vs_input)}{_num(vs_vae)}{_num(kept)}{_num(row.get('seconds'))}"
                    f"{_pictures(row, page.parent)}</tr>")
    header = "".join(f"<th>{c}</th>" for c in COLUMNS)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>invedit recipe report</title>"
            f"<style>{_STYLE}</style></head><body>{head}<table><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><script>{_SORT}{_LOADED}</script></body></html>")
