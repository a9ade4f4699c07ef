"""Set-up every benchmark shares: run offline from a checkout, without installing it.

Imported first by each ``bench_*.py`` (the script's folder is on ``sys.path`` when it runs).
The TRL peer script runs in its own venv and does not use it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
