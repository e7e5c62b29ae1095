"""The drift check as one self-contained HTML file: the table, and a plot per drifting column
(reference vs captured share per bin, or per value for a categorical column), each an embedded
PNG. Needs matplotlib (the `monitor` extra)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from tritonflow.lineage.drift import render_text
from tritonflow.lineage.errors import TritonflowError


class MissingMonitorExtra(TritonflowError):
    """--html needs matplotlib, which tritonflow does not install by default."""


def drift_plots(doc: dict[str, Any]) -> list[tuple[str, bytes]]:
    """A PNG per drifting column (reference vs captured share per bin), by column name."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # NOTE: no display: render to memory only
        from matplotlib import pyplot
    except ImportError:
        raise MissingMonitorExtra(
            "the drift plots need matplotlib: pip install 'tritonflow[monitor]' (or drop --html)"
        ) from None
    items = [*doc["features"], *([doc["prediction"]] if doc["prediction"] else [])]
    return [(item["name"], _plot(pyplot, item)) for item in items if item["drift"]]


def write_html(doc: dict[str, Any], path: Path) -> None:
    plots = "".join(
        f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        for name, png in drift_plots(doc)
    )
    title = html.escape(f"Drift of {doc['deployment_id']}")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1><pre>{html.escape(render_text(doc))}</pre>{plots}</body></html>\n"
    )
    try:
        path.write_text(page)
    except OSError as exc:
        raise TritonflowError(f"cannot write the --html report {path}: {exc.strerror}") from None


def _plot(pyplot: Any, item: dict[str, Any]) -> bytes:
    bins = item["bins"]
    labels = bins["labels"] if "labels" in bins else _bin_labels(bins["edges"])
    figure, axes = pyplot.subplots(figsize=(8, 3))
    positions = range(len(labels))
    axes.bar([p - 0.2 for p in positions], bins["reference"], width=0.4, label="reference (training)")
    axes.bar([p + 0.2 for p in positions], bins["current"], width=0.4, label="captured")
    axes.set_xticks(list(positions), labels, rotation=45, ha="right", fontsize=7)
    axes.set_ylabel("share of rows")
    ks = "" if item["ks"] is None else f", KS {item['ks']:.3f}"
    axes.set_title(f"{item['name']}: PSI {item['psi']:.3f}{ks}")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    pyplot.close(figure)
    return buffer.getvalue()


def _bin_labels(edges: list[float]) -> list[str]:
    """A numeric column's bins, (-inf, e0] ... (ek, inf), then missing."""
    labels = [f"<= {edges[0]:.3g}"] if edges else []
    labels += [f"{a:.3g}..{b:.3g}" for a, b in zip(edges, edges[1:], strict=False)]
    return [*labels, f"> {edges[-1]:.3g}" if edges else "all", "missing"]
