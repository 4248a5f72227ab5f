"""The HTML index report of the experiments: figures beside claims."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _section(root: Path, name: str) -> str:
    result = json.loads((root / name / "results.json").read_text())
    parts = [f'<section id="{html.escape(name)}"><h2>{html.escape(result.get("title", name))}</h2>']
    parts.append(f"<p class=cmd>blackgrad run {html.escape(name)}</p>")
    claims = result.get("claims", [])
    if claims:
        parts.append("<table><tr><th>the claim</th><th>we measured</th><th>verdict</th></tr>")
        for row in claims:
            verdict = "supported" if row["holds"] else "<b>not supported: our measurement disagrees</b>"
            css = "ok" if row["holds"] else "no"
            parts.append(
                f"<tr class={css}><td>{html.escape(row['claim'])}</td>"
                f"<td>{html.escape(str(row['measured']))}</td><td>{verdict}</td></tr>"
            )
        parts.append("</table>")
    for page in result.get("pages", []):
        parts.append(f'<p>interactive page: <a href="{html.escape(name)}/{html.escape(page)}">{html.escape(page)}</a></p>')
    for figure in result.get("figures", []):
        parts.append(f'<figure><img src="{html.escape(name)}/{html.escape(figure)}" alt="{html.escape(figure)}"></figure>')
    parts.append("</section>")
    return "\n".join(parts)


def write_index(root: Path, names: list[str]) -> Path:
    """Write ``root/index.html`` for the experiments ``names`` found under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sections = "\n".join(_section(root, name) for name in names)
    toc = " · ".join(f'<a href="#{html.escape(n)}">{html.escape(n)}</a>' for n in names)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>blackgrad: the experiments</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }}
tr.no td {{ background: #fde8e8; }} tr.ok td {{ background: #eef8ee; }}
img {{ max-width: 100%; }} .cmd {{ font-family: monospace; color: #555; }}
</style></head><body>
<h1>blackgrad: the experiments</h1>
<p>Each section shows a claim beside what this run measured.
Rows in red are claims our measurement does not support.</p>
<p>{toc}</p>
{sections}
</body></html>
"""
    index = root / "index.html"
    index.write_text(page)
    return index
