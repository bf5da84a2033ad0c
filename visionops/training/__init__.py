"""Training, evaluation, export and the gated model registry."""
