"""Drift monitoring: image and prediction features, the drift simulator, the Evidently drift check
and the predictor's prediction log. Heavy libraries (cv2, pandas, Evidently) load only inside the
functions that need them."""
