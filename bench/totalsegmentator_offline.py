"""Run the official ``TotalSegmentator`` command line offline, with nnU-Net's trainer lookup fixed.

Usage: ``python bench/totalsegmentator_offline.py <TotalSegmentator arguments>``. Before handing over to
``totalsegmentator.bin.TotalSegmentator.main`` (the console script's entry point) it

* refuses every non-local socket connection, so nothing can reach the network (usage statistics, weight
  downloads, licence checks all fail loudly instead);
* makes nnU-Net import only the trainer module it needs (see ``bench/reference_tools.py``).

``TOTALSEG_HOME_DIR`` (with ``config.json`` ``"send_usage_stats": false``) and ``TOTALSEG_WEIGHTS_PATH`` must
be set by the caller.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_original_connect = socket.socket.connect


def _local_only_connect(self, address):
    if self.family == socket.AF_UNIX:
        return _original_connect(self, address)
    raise ConnectionRefusedError(f"network access blocked during the parity run: {address}")


def main() -> int:
    socket.socket.connect = _local_only_connect  # type: ignore[method-assign]
    from bench.reference_tools import install_direct_trainer_lookup

    install_direct_trainer_lookup()
    from totalsegmentator.bin.TotalSegmentator import main as totalsegmentator_main

    sys.argv = ["TotalSegmentator", *sys.argv[1:]]
    return totalsegmentator_main() or 0


if __name__ == "__main__":
    sys.exit(main())
