"""Leaderboards and run inspection, read from a results folder (the ``results`` package).

This package only *reads* run records (``config.json``, ``manifest.json``, ``metrics.json``, see
``jdcl_bench.records``); it never writes runs.

Typical use (this is what ``jdcl-bench`` does)::

    df = load_records("results/")                    # one row per complete run
    table = leaderboard(df, ["final_acc", "forgetting"], protocols=["cifar10-t5"])
    print(render_markdown(table))                    # or render_latex(table) / render_csv(table)
    rich.console.Console().print(render_show("results/cifar10-t5/jdcl/seed0"))

A leaderboard is a ``pandas.DataFrame`` whose rows are method labels and whose columns are
protocols (one metric) or ``(protocol, metric)`` pairs (several metrics). Every cell is a
:class:`Cell` (mean, sample std, number of seeds, best-in-column flag and provenance marks) or
``None`` when there is no complete run for it. Cells carry their own metric, so the renderers need
nothing but the table.

Modules, in reading order: ``schema`` (metrics, record columns, :class:`Cell`), ``load`` (a results
folder into one DataFrame), ``aggregate`` (seeds into cells; one table per preset tier), ``render``
(Markdown, CSV, LaTeX), ``show`` (one run), ``compare`` (the suite against published numbers),
``plots`` (figures: seen accuracy per task, accuracy against GPU-minutes).
"""
from .aggregate import MAIN_TIER, PAPER_TIER, budget_sentences, leaderboard, preset_tier, tier_tables
from .load import config_label, load_records, method_meta
from .render import left_out_sentence, render_csv, render_latex, render_markdown, render_tiers
from .schema import IGNORE_MARKER, LOWER_IS_BETTER, METRICS, RECORD_COLUMNS, Cell, is_flag
from .show import render_show, render_show_text

__all__ = ["Cell", "IGNORE_MARKER", "LOWER_IS_BETTER", "MAIN_TIER", "METRICS", "PAPER_TIER", "RECORD_COLUMNS",
           "budget_sentences", "config_label", "is_flag", "leaderboard", "left_out_sentence", "load_records", "method_meta",
           "preset_tier", "render_csv", "render_latex", "render_markdown", "render_show", "render_show_text",
           "render_tiers", "tier_tables"]
