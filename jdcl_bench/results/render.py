"""Leaderboards as Markdown, CSV and LaTeX (booktabs)."""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import pandas as pd

from .schema import LOWER_IS_BETTER, METRIC_SHORT, METRIC_WORDS, Cell

def left_out_sentence(left_out: dict) -> str:
    parts = ", ".join(f"{t}: {n}" for t, n in left_out.items())
    first = next(iter(left_out))
    return (f"Not in these tables: {sum(left_out.values())} record(s) of other presets ({parts}); "
            f"`jdcl-bench table --preset {first}` or `--all` shows them, each tier in a table of its own.")



def render_tiers(tables: Sequence[pd.DataFrame], left_out: dict, fmt: str = "markdown", *,
                 precision: int = 1) -> str:
    """The tables of :func:`tier_tables` in one document: Markdown paragraphs, LaTeX table
    environments, or one CSV whose ``table`` column names the tier (missing cells as rows with
    status ``missing``). A tier without records is said in words (a LaTeX comment; no CSV rows)."""
    parts = []
    header_done = False
    for t in tables:
        tier = t.attrs.get("tier")
        if len(t.index) == 0:
            words = " ".join(t.attrs.get("caption_head", []))
            if fmt == "markdown":
                parts.append(f"**Table (preset {tier}).** No record of preset {tier}. {words}\n")
            elif fmt == "latex":
                parts.append(f"% no record of preset {tier}\n")
            continue
        if fmt == "markdown":
            parts.append(render_markdown(t, precision=precision))
        elif fmt == "latex":
            parts.append(render_latex(t, precision=precision, label=f"tab:leaderboard-{tier}"))
        else:
            text = render_csv(t)
            parts.append(text if not header_done else text.split("\n", 1)[1])
            header_done = True
    if left_out and fmt == "markdown":
        parts.append(left_out_sentence(left_out) + "\n")
    elif left_out and fmt == "latex":
        parts.append("% " + left_out_sentence(left_out) + "\n")
    return ("\n" if fmt != "csv" else "").join(parts)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _columns(table: pd.DataFrame, metric: str | None) -> list[tuple[Any, str, str]]:
    """(column key, protocol, metric) for each column of a leaderboard table."""
    if isinstance(table.columns, pd.MultiIndex):
        cols = [(col, str(col[0]), str(col[1])) for col in table.columns]
    else:
        known = table.attrs.get("metrics") or []
        out = []
        for col in table.columns:
            found = next((c.metric for c in table[col] if isinstance(c, Cell)), None)
            # An empty column has no cell to ask: fall back on what leaderboard() recorded.
            m = found or (known[0] if len(known) == 1 else None) or metric
            if m is None:
                raise ValueError("cannot tell which metric this table shows; pass metric=")
            out.append((col, str(col), m))
        cols = out
    if metric is not None:
        shown = {m for _, _, m in cols}
        if shown - {metric}:
            raise ValueError(f"metric={metric!r} but the table shows {sorted(shown)}")
    return cols


def _cells(table: pd.DataFrame) -> list[Cell]:
    return [c for col in table.columns for c in table[col] if isinstance(c, Cell)]


def _num(x: float, precision: int) -> str:
    text = f"{x:.{precision}f}"
    # "-0.0" reads like a sign that is not there.
    return text[1:] if re.fullmatch(r"-0\.?0*", text) else text


def _has_std(cell: Cell) -> bool:
    return cell.n > 1 and math.isfinite(cell.std)


def _caption_sentences(table: pd.DataFrame, cols: list, style: str) -> tuple[list[str], list[str]]:
    """Caption sentences and footnote sentences, for style "md" (plain text) or "latex"."""
    tex = style == "latex"
    esc = _latex_escape if tex else (lambda s: s)
    pm = "$\\pm$" if tex else "±"
    dagger, ddagger = ("$^{\\dagger}$", "$^{\\ddagger}$") if tex else ("†", "‡")
    section = "$^{\\S}$" if tex else "§"
    metrics = list(dict.fromkeys(m for _, _, m in cols))
    cells = _cells(table)

    def words(m: str) -> str:
        return f"{METRIC_WORDS[m]} ({'lower' if LOWER_IS_BETTER[m] else 'higher'} is better)"

    caption = [esc(t) for t in table.attrs.get("caption_head", [])]
    if len(metrics) == 1:
        first = words(metrics[0])
        caption.append(esc(first[0].upper() + first[1:]) + ".")
    else:
        caption.append("Metrics: " + "; ".join(esc(f"{METRIC_SHORT[m]}: {words(m)}") for m in metrics) + ".")
    caption.append(f"Each cell: mean {pm} standard deviation over seeds (sample std, ddof=1), "
                   "n = number of seeds; a cell with n=1 shows its single value and no std.")
    ns = sorted({c.n for c in cells})
    if ns:
        seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}" + ("--" if tex else "–") + f"{ns[-1]}"
        caption.append(f"Seeds per cell: {seeds}.")
    if any(c.best for c in cells):
        bounds = [str(r) for r in table.index if str(r).endswith(" bound)")]
        caption.append("Best per column in bold" + (
            f", among continual learners: the reference bounds ({', '.join(esc(b) for b in bounds)}) are "
            "listed last and never bold." if bounds else "."))
    if any(not isinstance(table.at[r, col], Cell) for r in table.index for col, _, _ in cols):
        empty = table.attrs.get("empty_text")
        caption.append(esc(table.attrs.get("empty_caption", f"{empty}: no complete run.")) if empty
                       else ("--" if tex else "–") + ": no complete run.")
    caption += [esc(t) for t in table.attrs.get("caption_tail", [])]

    notes: list[str] = []
    noncanonical = sorted({n for c in cells for n in c.noncanonical})
    if noncanonical:
        notes.append(f"{dagger} Non-canonical dataset: " + "; ".join(esc(n) for n in noncanonical) + ".")
    reduced = sorted({p for c in cells for p in c.reduced_presets})
    if reduced:
        which = ", ".join(esc(p) for p in reduced)
        notes.append(f"{ddagger} Reduced compute budget (preset {which}), not the paper's full budget.")
    if any(c.shared_gpu for c in cells):
        notes.append(f"{section} Time of runs that shared one GPU with other runs in parallel: wall-clock "
                     "minutes on a shared device, an upper bound on the run's own GPU time.")
    return caption, notes


def render_markdown(table: pd.DataFrame, metric: str | None = None, *, precision: int = 1) -> str:
    """GitHub-flavoured Markdown: the table, then a caption paragraph and the footnotes.

    Cells read ``83.7 ± 0.4 (n=3)``, or ``83.7 (n=1)`` for a single seed; the best cell of a
    column is ``**bold**``; ``†`` marks a non-canonical dataset, ``‡`` a reduced-budget preset.
    With several metrics the headers read ``protocol / metric``. ``metric`` is optional (cells know
    their metric); if given it must match the table.
    """
    cols = _columns(table, metric)
    multi = isinstance(table.columns, pd.MultiIndex)

    def md(text: str) -> str:
        return str(text).replace("|", "\\|")

    def cell_text(cell: Any) -> str:
        if not isinstance(cell, Cell):
            return table.attrs.get("empty_text") or "–"
        core = _num(cell.mean, precision)
        if _has_std(cell):
            core += f" ± {_num(cell.std, precision)}"
        if cell.best:
            core = f"**{core}**"
        marks = ("†" if cell.noncanonical else "") + ("‡" if cell.reduced_presets else "") + \
            ("§" if cell.shared_gpu else "")
        return f"{core} (n={cell.n})" + (f" {marks}" if marks else "")

    headers = ["Method"] + [md(f"{p} / {METRIC_SHORT[m]}" if multi else p) for _, p, m in cols]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(cols)) + "|"]
    for label in table.index:
        row = [md(label)] + [cell_text(table.at[label, col]) for col, _, _ in cols]
        lines.append("| " + " | ".join(row) + " |")
    caption, notes = _caption_sentences(table, cols, "md")
    out = "\n".join(lines) + "\n\n" + "**Table.** " + " ".join(caption) + "\n"
    if notes:
        out += "\n" + "\n".join(f"{n}  " for n in notes) + "\n"
    return out


def render_csv(table: pd.DataFrame, metric: str | None = None) -> str:
    """Tidy CSV, one line per non-empty cell: ``method,protocol,metric,mean,std,n``.

    Numbers are written at full precision (std empty when n=1), so
    ``pandas.read_csv(io.StringIO(text))`` gives back exactly the aggregated values.
    """
    cols = _columns(table, metric)
    tier = table.attrs.get("tier")  # a table of one preset tier (jdcl-bench table): says so, and its missing cells
    rows = []
    for label in table.index:
        for col, p, m in cols:
            cell = table.at[label, col]
            if isinstance(cell, Cell):
                rows.append({"table": tier, "method": label, "protocol": p, "metric": m, "mean": cell.mean,
                             "std": cell.std if _has_std(cell) else math.nan, "n": cell.n, "status": "ok"})
            elif tier is not None and table.attrs.get("empty_text"):
                rows.append({"table": tier, "method": label, "protocol": p, "metric": m, "mean": math.nan,
                             "std": math.nan, "n": 0, "status": table.attrs["empty_text"]})
    columns = ["method", "protocol", "metric", "mean", "std", "n"]
    if tier is not None:
        columns = ["table", *columns, "status"]
    out = pd.DataFrame(rows, columns=columns)
    return out.to_csv(index=False)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    # One pass, so the backslashes added for one character are not escaped again.
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def render_latex(table: pd.DataFrame, metric: str | None = None, *, precision: int = 1,
                 label: str | None = None) -> str:
    """A booktabs ``table`` environment built with pandas Styler (needs ``\\usepackage{booktabs}``).

    Cells read ``$83.7 \\pm 0.4$ {\\scriptsize (n=3)}`` (just ``$83.7$`` and n=1 for one seed);
    the best cell per column is wrapped in ``\\textbf{\\boldmath ...}`` (``\\boldmath`` so the
    numbers in math mode turn bold too); ``$^{\\dagger}$`` marks a non-canonical dataset and
    ``$^{\\ddagger}$`` a reduced-budget preset, with both notes spelled out in the caption.
    Method labels and protocol names are LaTeX-escaped. With several metrics the header has a
    protocol row (``\\multicolumn`` + ``\\cmidrule``) above a metric row. ``label`` adds
    ``\\label{...}``.
    """
    cols = _columns(table, metric)
    multi = isinstance(table.columns, pd.MultiIndex)

    def cell_text(cell: Any) -> str:
        if not isinstance(cell, Cell):
            return _latex_escape(table.attrs["empty_text"]) if table.attrs.get("empty_text") else "--"
        core = f"${_num(cell.mean, precision)}"
        core += f" \\pm {_num(cell.std, precision)}$" if _has_std(cell) else "$"
        marks = ("\\dagger" if cell.noncanonical else "") + ("\\ddagger" if cell.reduced_presets else "") + \
            ("\\S" if cell.shared_gpu else "")
        return core + f" {{\\scriptsize (n={cell.n})}}" + (f"$^{{{marks}}}$" if marks else "")

    if multi:
        header = pd.MultiIndex.from_tuples([(p, METRIC_SHORT[m]) for _, p, m in cols], names=[None, "Method"])
    else:
        header = pd.Index([p for _, p, _ in cols], name="Method", dtype=object)
    body = pd.DataFrame([[cell_text(table.at[r, col]) for col, _, _ in cols] for r in table.index],
                        index=pd.Index([str(r) for r in table.index], dtype=object), columns=header)
    best = pd.DataFrame([["textbf: --rwrap; boldmath: ;" if getattr(table.at[r, col], "best", False) else ""
                          for col, _, _ in cols] for r in table.index],
                        index=body.index, columns=body.columns)

    caption, notes = _caption_sentences(table, cols, "latex")
    styler = (body.style
              .format_index(escape="latex", axis=0)
              .format_index(escape="latex", axis=1)
              .apply(lambda _: best, axis=None))
    latex = styler.to_latex(hrules=True, column_format="l" + "c" * len(cols), multicol_align="c",
                            position_float="centering", caption=" ".join(caption + notes), label=label)
    if multi:
        latex = _add_cmidrules(latex, cols)
    return latex


def _add_cmidrules(latex: str, cols: list) -> str:
    """Underline each protocol's group header, booktabs style (Styler does not do this)."""
    spans, start = [], 2  # column 1 holds the method labels
    for p in dict.fromkeys(p for _, p, _ in cols):
        width = sum(1 for _, q, _ in cols if q == p)
        spans.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    lines = latex.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == "\\toprule" and i + 1 < len(lines):
            lines.insert(i + 2, " ".join(spans))
            break
    return "\n".join(lines)


