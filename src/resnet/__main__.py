"""``python -m resnet ...`` (and ``torchrun -m resnet train ...``) is the ``resnet`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
