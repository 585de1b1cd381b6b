"""The evaluate stage's library: one concept per module.

    runs          a trained run directory (models/<variant>/seed<k>/) and the model it started from
    perplexity    perplexity under the experiment's memory protocol (lm: v1 validation; selection: N slots)
    selection     the memory builder's bank and landmark scores of held-out queries (selection accuracy)
    report_data   the plot tables (learning curves, PPL bracket, selection accuracy, confusion)
    stage         every (variant, seed) -> metrics/<experiment>/ runs/*.json, summary.json, plots/*.csv
"""
