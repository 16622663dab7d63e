"""Holoscan-free logic modules and the thin MONAI Deploy operators that wrap them."""
