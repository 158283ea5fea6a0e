"""Training: labels, the point-in-time training set, candidates, metrics and the quality gate."""
