"""The data layer: VISION loader, synthetic generator, validation and COCO -> YOLO conversion, and
the image and prediction features (`features`, `tables`) that training and monitoring share.

Submodules are imported on demand (`from visionops.data.convert import convert`); importing this
package pulls in nothing heavy.
"""
