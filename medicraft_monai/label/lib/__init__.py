"""MONAI Label tasks of the medicraft app (import only inside the MONAI Label environment, ``.venv-label``)."""
