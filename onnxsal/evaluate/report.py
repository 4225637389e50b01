"""The result of `onnxsal.evaluate`: one row per method and one column per metric, as text or Markdown,
as JSON (every per-image value and curve), and as PNG plots of the curves and of the randomisation
cascade. matplotlib is imported only when a plot is drawn (`pip install onnxsal[plot]`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OnnxsalError
from ..io_utils import write_bytes_atomic
from .curves import Curve

# metric -> (column title, which way is better, the curve's number the column shows)
METRICS = {
    "deletion": ("deletion AUC", "lower", "auc"),
    "insertion": ("insertion AUC", "higher", "auc"),
    "morf": ("MoRF AOPC", "higher", "aopc"),
    "lerf": ("LeRF AOPC", "lower", "aopc"),
    "infidelity": ("infidelity", "lower", None),
    "sensitivity": ("max-sensitivity", "lower", None),
}
ARROW = {"lower": "↓", "higher": "↑"}


@dataclass
class Evaluation:
    """Per method and metric: one value per image (`values`), the curves behind the curve metrics,
    the seconds spent, and the sanity check's cascades when asked for."""

    methods: list[str]
    metrics: list[str]
    values: dict[str, dict[str, np.ndarray]]
    curves: dict[str, dict[str, Curve]]
    seconds: dict[str, dict[str, float]]
    images: list[str]
    targets: np.ndarray
    settings: dict = field(default_factory=dict)
    sanity: dict[str, object] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why) of files that could not be read

    def summary(self) -> dict[str, dict[str, float]]:
        """The mean over images of each method's metrics."""
        return {m: {k: float(np.mean(v)) for k, v in self.values[m].items()} for m in self.methods}

    def table(self, fmt: str = "text") -> str:
        """One row per method: each metric's mean (± std over images) and the seconds spent.
        `fmt`: "text" (aligned columns) or "markdown"."""
        if fmt not in ("text", "markdown"):
            raise OnnxsalError(f"the table format must be 'text' or 'markdown', not {fmt!r}.")
        sanity = self._sanity_columns()
        head = (["method"] + [f"{METRICS[k][0]} {ARROW[METRICS[k][1]]}" for k in self.metrics]
                + [f"randomised {k} ↓" for k in sanity] + ["seconds"])
        rows = []
        for m in self.methods:
            cells = [m]
            for k in self.metrics:
                v = self.values[m][k]
                cells.append(f"{np.mean(v):.4g}" + (f" ± {np.std(v):.2g}" if len(v) > 1 else ""))
            cells += [f"{float(self.sanity[m].mean(k)[-1]):.3f}" for k in sanity]
            cells.append(f"{sum(self.seconds[m].values()):.1f}")
            rows.append(cells)
        note = f"{len(self.images)} images; ↓ lower is better, ↑ higher is better."
        if sanity:
            note += " randomised: similarity to the original map once every layer's weights are randomised."
        if fmt == "markdown":
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(lines + ["", note]) + "\n"
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt_row = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        return "\n".join([fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows] + [note]) + "\n"

    def _sanity_columns(self) -> list[str]:
        """The cascade metrics every method has (their value once every layer is randomised goes in the table)."""
        if not self.sanity:
            return []
        return [k for k in ("spearman_abs", "ssim") if all(k in r.metrics for r in self.sanity.values())]

    def to_dict(self) -> dict:
        """Everything, as plain JSON types: settings, images, targets, per-image values, curves, seconds, sanity."""
        out = {
            "settings": self.settings,
            "images": list(self.images),
            "targets": np.asarray(self.targets).tolist(),
            "metrics": {k: {"title": METRICS[k][0], "better": METRICS[k][1]} for k in self.metrics},
            "summary": self.summary(),
            "methods": {},
            "skipped": [{"image": i, "error": e} for i, e in self.skipped],
        }
        for m in self.methods:
            out["methods"][m] = {
                "values": {k: np.asarray(v).tolist() for k, v in self.values[m].items()},
                "curves": {k: c.to_dict() for k, c in self.curves.get(m, {}).items()},
                "seconds": {k: round(float(s), 3) for k, s in self.seconds[m].items()},
            }
            if m in self.sanity:
                out["methods"][m]["sanity"] = self.sanity[m].to_dict()
        return out

    def to_json(self, path=None, indent: int = 2) -> str:
        """The JSON text of `to_dict()`, also written (atomically) to `path` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=True)
        if path is not None:
            write_bytes_atomic((text + "\n").encode("utf-8"), path)
        return text

    def plot(self, path) -> Path:
        """PNG of the curves: one panel per curve metric, each method's mean curve over the images."""
        kinds = [k for k in self.metrics if METRICS[k][2] is not None]
        if not kinds:
            raise OnnxsalError("there are no curves to plot: choose one of deletion, insertion, morf, lerf.")
        figure, canvas = _figure(len(kinds))
        for i, kind in enumerate(kinds):
            ax = figure.add_subplot(1, len(kinds), i + 1)
            number = METRICS[kind][2]
            for m in self.methods:
                c = self.curves[m][kind]
                ax.plot(c.fractions, c.scores.mean(axis=0), label=f"{m} ({number.upper()} {np.mean(getattr(c, number)):.3f})")
            ax.set_title(f"{kind} ({len(self.images)} images)")
            ax.set_xlabel("fraction of pixels " + ("inserted" if kind == "insertion" else "replaced"))
            ax.set_ylabel(f"{self.settings.get('score', 'score')} of the target class")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return _save(figure, canvas, path)

    def plot_sanity(self, path) -> Path:
        """PNG of the randomisation cascades: each method's similarity to its original map per step
        (`randomisation.plot_cascades`)."""
        if not self.sanity:
            raise OnnxsalError("there is no sanity check to plot: evaluate with sanity=True.")
        _figure(1)  # the one-sentence error when matplotlib is missing
        from .randomisation import plot_cascades

        return Path(plot_cascades(list(self.sanity.values()), path))

    def save(self, out_dir) -> list[Path]:
        """Write evaluation.txt, evaluation.md, evaluation.json, curves.png (and sanity.png) to `out_dir`."""
        out = Path(out_dir)
        written = [write_bytes_atomic(self.table("text").encode("utf-8"), out / "evaluation.txt"),
                   write_bytes_atomic(self.table("markdown").encode("utf-8"), out / "evaluation.md")]
        self.to_json(out / "evaluation.json")
        written.append(out / "evaluation.json")
        if any(METRICS[k][2] is not None for k in self.metrics):
            written.append(self.plot(out / "curves.png"))
        if self.sanity:
            written.append(self.plot_sanity(out / "sanity.png"))
        return written


def _figure(panels: int):
    """A matplotlib Figure with its Agg canvas (no pyplot, no global state); one sentence if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OnnxsalError("plotting needs matplotlib: pip install onnxsal[plot]") from None
    figure = Figure(figsize=(4.2 * panels, 3.8), dpi=110)
    return figure, FigureCanvasAgg(figure)


def _save(figure, canvas, path) -> Path:
    figure.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    return write_bytes_atomic(buf.getvalue(), path)
