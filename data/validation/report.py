"""The report people read offline (validation.json, validation.html with tables and plots)
and TFDV's Facets page beside it."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from efm.data.validation.gate import ValidationReport
from efm.data.validation.tables import ALL, TABLES

# Output files of `validate_dataset` (the step's artifact).
REPORT_JSON = "validation.json"
REPORT_HTML = "validation.html"
FACETS_HTML = "facets.html"


def _feature_rows(stats: Any) -> list[dict[str, Any]]:
    rows = []
    for f in stats.datasets[0].features:
        name = "/".join(f.path.step) if f.path.step else f.name
        row: dict[str, Any] = {"feature": name}
        if f.HasField("num_stats"):
            s = f.num_stats
            row |= {"type": "INT" if f.type == 0 else "FLOAT", "count": s.common_stats.num_non_missing,
                    "missing": s.common_stats.num_missing, "values/row": s.common_stats.avg_num_values,
                    "mean": s.mean, "std": s.std_dev, "min": s.min, "max": s.max, "zeros": s.num_zeros}
            hist = [h for h in s.histograms if h.type == 0]
            if hist:
                row["histogram"] = [(b.low_value, b.high_value, b.sample_count) for b in hist[0].buckets]
        elif f.HasField("string_stats"):
            s = f.string_stats
            row |= {"type": "STRING", "count": s.common_stats.num_non_missing,
                    "missing": s.common_stats.num_missing, "unique": s.unique,
                    "avg length": s.avg_length,
                    "top": [(v.value, v.frequency) for v in s.top_values[:5]]}
        rows.append(row)
    return rows


def _plot(rows: list[dict[str, Any]], title: str) -> str:
    """Histograms of the numeric features as an inline PNG (<img>), or ""."""
    numeric = [r for r in rows if "histogram" in r]
    if not numeric:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(numeric))
    nrows = (len(numeric) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.3 * nrows), squeeze=False)
    for ax in axes.flat[len(numeric):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, numeric, strict=False):
        lo = [b[0] for b in r["histogram"]]
        width = [max(b[1] - b[0], 1e-9) for b in r["histogram"]]
        ax.bar(lo, [b[2] for b in r["histogram"]], width=width, align="edge", color="#4c72b0")
        ax.set_title(r["feature"], fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(f"{html.escape(x.decode(errors='replace') if isinstance(x, bytes) else str(x))}"
                         f" ({n})" for x, n in v)
    return html.escape(str(v))


def report_html(report: ValidationReport, stats: Mapping[str, Mapping[str, Any]]) -> str:
    """The statistics and anomalies as one self-contained page (tables and plots; no network)."""
    status = "passed" if report.ok else f"FAILED: {len(report.failed)} anomalies"
    parts = ["<html><head><meta charset='utf-8'><title>Data validation</title><style>"
             "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td:first-child{text-align:left}"
             ".bad{color:#b00} .ok{color:#070}</style></head><body>",
             f"<h1>Data validation: {html.escape(report.domain)}</h1>",
             f"<p>{html.escape(report.path)}</p>",
             f"<p class='{'ok' if report.ok else 'bad'}'><b>{status}</b> ({report.seconds:.1f} s)</p>",
             "<h2>Anomalies</h2>"]
    if report.anomalies:
        parts.append("<table><tr><th>anomaly</th><th>check</th><th>slice</th><th>accepted</th>"
                     "<th>description</th></tr>")
        for a in report.anomalies:
            parts.append(f"<tr class='{'' if a.accepted else 'bad'}'><td>{html.escape(a.name)}</td>"
                         f"<td>{a.check}</td><td>{html.escape(a.slice)}</td><td>{'yes' if a.accepted else 'no'}"
                         f"</td><td style='text-align:left'>{html.escape(a.description)}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>none</p>")
    if report.skipped:
        parts.append("<p>Not checked: " + "; ".join(html.escape(s) for s in report.skipped) + "</p>")
    parts.append("<h2>Slices</h2><table><tr><th>slice</th><th>episodes</th><th>steps</th></tr>")
    for name, c in report.counts.items():
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{c['episodes']}</td><td>{c['steps']}</td></tr>")
    parts.append("</table>")
    columns = ("type", "count", "missing", "values/row", "mean", "std", "min", "max", "zeros",
               "unique", "avg length", "top")
    for table in TABLES:
        rows = _feature_rows(stats[table][ALL])
        parts.append(f"<h2>{table} (all episodes)</h2><table><tr><th>feature</th>"
                     + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
        for r in rows:
            parts.append(f"<tr><td>{html.escape(r['feature'])}</td>"
                         + "".join(f"<td>{_fmt(r[c]) if c in r else ''}</td>" for c in columns) + "</tr>")
        parts.append("</table>")
        parts.append(_plot(rows, f"{table}: histograms"))
    parts.append("</body></html>")
    return "\n".join(parts)


def facets_html(stats: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any]) -> str:
    """TFDV's own Facets Overview page (loads its scripts from the web), steps and episodes,
    beside the domain's reference statistics where there are some."""
    from tensorflow_data_validation.utils.display_util import get_statistics_html

    pages = []
    for table in TABLES:
        kwargs: dict[str, Any] = {"lhs_name": f"{table}: this dataset"}
        if table in reference:
            kwargs |= {"rhs_statistics": reference[table], "rhs_name": f"{table}: domain reference"}
        pages.append(f"<h2>{table}</h2>" + get_statistics_html(stats[table][ALL], **kwargs))
    return "<html><head><meta charset='utf-8'></head><body>" + "\n".join(pages) + "</body></html>"


def write_report(report: ValidationReport, stats: Mapping[str, Mapping[str, Any]],
                 reference: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> None:
    out = Path(out_dir)
    (out / REPORT_JSON).write_text(json.dumps(report.to_json(), indent=1, sort_keys=True))
    (out / REPORT_HTML).write_text(report_html(report, stats))
    try:
        (out / FACETS_HTML).write_text(facets_html(stats, reference))
    except Exception as e:  # Facets is a convenience beside the offline page, never a failure
        (out / FACETS_HTML).write_text(f"<html><body>Facets page unavailable: {html.escape(str(e))}</body></html>")
