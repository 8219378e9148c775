"""``python -m mbq_onnx.export`` (see :mod:`mbq_onnx.export.cli`)."""

import sys

from .cli import main

sys.exit(main())
