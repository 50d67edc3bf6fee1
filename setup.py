"""Build script beside ``pyproject.toml`` (which holds everything else) for the one thing pyproject cannot say.

The wheel ships the top-level ``bundles/`` folder, unmoved, as the data-only package ``medicraft_monai.zoo``
(found at run time by :mod:`medicraft_monai.bundles`). pyproject.toml can list packages either found or by hand,
not both, and ``bundles/`` is not below ``medicraft_monai/``: so the found packages plus the mapped one are given
here. The files of the zoo that are shipped are named in pyproject.toml's ``[tool.setuptools.package-data]``.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["medicraft_monai", "medicraft_monai.*"]), "medicraft_monai.zoo"],
    package_dir={"medicraft_monai.zoo": "bundles"},
)
