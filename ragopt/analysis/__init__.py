"""Analysis of a study: question splits, statistics, selection rules, comparisons, the summary, the
report, generated versus real questions."""
