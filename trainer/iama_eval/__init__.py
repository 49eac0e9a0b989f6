"""``iama eval``, ``iama sweep``, ``iama probe``: rewards under BoN / soft BoN per model, weights
and budget; IAMA vs linear GRPO with intervals and at matched KL; the base measured before training.

Four layers, imports pointing down only (docs/layout.md): pure values and predictions
(``values``, ``evaluate``, ``matched_kl``, ``prediction``, ``distributions``); I/O (``config``,
``generate``, ``sequence_kl``, ``samples``, ``raw_files``, ``tables``); figures (``plots``,
``path_plots``); commands (``run``, ``probe``, ``kl_path``, ``sweep``, ``cli``).
"""
