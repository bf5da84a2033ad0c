"""Drift monitoring: the Evidently drift check (`drift`) and where its result goes (`publish`), the
drift simulator, and the predictor's prediction log (`prediction_log`, read back by `collect`). The
features the check compares are `visionops.data.features`. pandas and Evidently load only inside
the functions that need them."""
