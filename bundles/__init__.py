"""The MONAI bundles of medicraft_monai, one folder each (``bundles/<name>/configs``, ``docs``, ``LICENSE``, ``models``).

This file holds no code: it makes the folder the package ``medicraft_monai.zoo`` that the wheel and an editable
install ship it as (``setup.py`` maps it), so that :func:`medicraft_monai.bundles.bundle_path` finds the bundles
through :mod:`importlib.resources` from anywhere.
"""
