"""``iama eval``: reward under BoN / soft BoN per model, weights and budget; Pareto fronts."""
