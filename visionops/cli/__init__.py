"""The `visionops` command: a thin layer over the library, one module per topic."""
