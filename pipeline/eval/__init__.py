"""Stage `eval_report`: BC alone vs BC + residual, paired, on one robot (the twin or a real SO-101), as a report."""
