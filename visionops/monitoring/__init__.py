"""Drift monitoring: the Evidently drift check (`drift`, each side read by `drift_sample`) and where
its result goes (`publish`), the drift simulator, and the predictor's prediction log: its layout
(`log_layout`), its writer (`prediction_log`, shipped to the store by `log_shipping`, kept in
`log_spool` while the store is down), compaction (`compact`), and reading it back (`collect`, the
files by `log_files`). The features the check compares are `visionops.data.features`. pandas and
Evidently load only inside the functions that need them."""
