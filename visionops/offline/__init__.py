"""Proof below Python that nothing reaches the network: `visionops doctor offline`."""
