"""VisionOps: MLOps for industrial visual defect detection.

Importing this package has no side effects and pulls in no heavy dependency: Ultralytics, torch,
KFP and KServe are imported only inside the functions that need them.
"""

__version__ = "0.1.0"
