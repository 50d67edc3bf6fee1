"""Evaluation of synthetic OCT data: utility, fidelity, diversity, privacy (memorisation) and anatomy."""
