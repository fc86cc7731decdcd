"""The four metrics of semi-supervised segmentation papers (Dice, Jaccard, HD95, ASD) and their report."""
