"""``python -m app -i IN -o OUT -m MODELS`` (the MONAI Deploy way; HOLOSCAN_* variables work too)."""

from app.cli import run_sdk_style

if __name__ == "__main__":
    run_sdk_style()
