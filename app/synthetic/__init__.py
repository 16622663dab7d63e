"""Synthetic MR data: a procedural torso phantom with TotalSegmentator MR labels, and a DICOM study of it.

Used by the demo (``totalseg-mri phantom``), by the tests and to train the small demo model. Everything is
deterministic from an integer seed.
"""
