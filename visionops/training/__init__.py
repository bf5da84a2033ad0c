"""Training, evaluation, INT8 variants and export; the promotion gate (`gate`, a pure rule), the
MLflow registry (`registry`) and promotion (`promotion`: evaluate, decide, move the aliases)."""
