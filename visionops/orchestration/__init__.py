"""Running the KFP pipelines of `pipelines/`: compile, run locally, submit to a KFP server.

`kfp` is imported inside the functions that need it, so `visionops` stays light to import.
"""
