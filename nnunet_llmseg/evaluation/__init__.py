"""The four metrics of semi-supervised segmentation papers (Dice, Jaccard, HD95, ASD) and their report.

``metrics.case_metrics`` scores one binary structure (surface distances from medpy, in mm, with an explicit
convention for empty structures); ``report.evaluate_folders`` / ``write_reports`` / ``format_table`` score a
prediction folder per case and class and back ``nnunet-llmseg evaluate``. See docs/evaluation.md.
"""
