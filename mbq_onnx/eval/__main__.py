"""``python -m mbq_onnx.eval`` (see :mod:`mbq_onnx.eval.cli`)."""

from .cli import main

raise SystemExit(main())
