"""TotalSegmentator MRI as a MONAI Deploy application."""

__version__ = "0.1.0"
