"""The VisionOps KServe predictor: `python -m serving` (see README, "Serving").

Thin by design: the engine is `visionops.inference`; this package maps KServe's protocols onto it
and adds what a public endpoint needs (limits, metrics, prediction log, reload).
"""
