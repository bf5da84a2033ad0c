"""The data layer: VISION loader, synthetic generator, validation and COCO -> YOLO conversion.

Submodules are imported on demand (`from visionops.data.convert import convert`); importing this
package pulls in nothing heavy.
"""
