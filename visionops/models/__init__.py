"""The model layer: the model directory every stage agrees on (`artifact`) and where a model comes
from (`sources`: a folder, an `s3://` prefix, `models:/NAME@ALIAS`, `models:/NAME/N`,
`runs:/ID/PATH`).

Training writes the directory, the registry stores it; evaluation, training (fine-tuning), deploy
and the predictor resolve a source to a local copy through `sources.resolve_model`. Nothing here
imports torch.
"""
