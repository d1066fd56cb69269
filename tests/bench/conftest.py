"""bench/ is a folder at the repository root, not an installed package: importable here for the tests of its pure
parts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
