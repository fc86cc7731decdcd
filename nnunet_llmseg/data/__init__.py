"""The data side of semi-supervised training: unlabelled preprocessing, labelled subsets, the dual loader."""
