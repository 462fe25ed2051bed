"""Entry point of ``kubectl-codingjob`` (and ``python -m kubectl_codingjob``)."""

from __future__ import annotations

from kubectl_codingjob.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
