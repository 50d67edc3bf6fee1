"""The ``medicraft`` command: home of the user-facing commands.

Run ``medicraft --help`` for the list, ``medicraft COMMAND --help`` for one command's options.
"""

from __future__ import annotations

import fire


class MedicraftCLI:
    """medicraft_monai: multiply small OCT data sets with class-conditioned diffusion models."""


def main() -> None:
    """Entry point of the ``medicraft`` console script."""
    fire.Fire(MedicraftCLI, name="medicraft")


if __name__ == "__main__":
    main()
