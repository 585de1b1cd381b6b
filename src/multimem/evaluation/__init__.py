"""The evaluate stage's library: one concept per module.

    runs          a trained run directory (models/<variant>/seed<k>/) and the model it started from
    perplexity    perplexity under the experiment's memory protocol (lm: v1 validation; selection: N slots)
    selection     the memory builder's bank and landmark scores of held-out queries (selection accuracy)
    report_data   the plot tables (learning curves, PPL bracket, selection accuracy, confusion)
    stats         t-intervals over seeds, paired per-example comparisons (Holm), selection statistics, Clopper–Pearson
    selection_metrics  selection accuracy, per-domain accuracy, confusion, mixing-weight diagnostics
    aggregate     per-run metrics -> the experiment summary (seed aggregates, paired differences)
    report_tables the report's tables and computed conclusions
    stage         every (variant, seed) -> metrics/<experiment>/ runs/*.json, summary.json, plots/*.csv
    headline      what DVC compares across branches: metrics/headline.json and metrics/<table>.csv
    ablation_table  one row per ablation rung from its summary (bracket, selection), Holm across the table
    render        a report notebook -> byte-stable, self-contained HTML (papermill + nbconvert)
"""
