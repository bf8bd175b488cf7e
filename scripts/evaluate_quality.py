"""Measure the quality gate (non-lesion images turned away, real dermoscopy kept): `python
scripts/evaluate_quality.py --help`. The code is skinmole.quality_evaluation."""

import sys

from skinmole.quality_evaluation import main

if __name__ == "__main__":
    sys.exit(main())
