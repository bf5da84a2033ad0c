"""The data loop: the images the predictor kept, the ones worth labelling, and the labels back.

Selection reads the prediction log (monitoring, one floor down) and picks a window's most useful
images; export and import move them to an annotation tool (Label Studio, or COCO files for CVAT)
and back into a VISION root that training takes as new data.
"""
