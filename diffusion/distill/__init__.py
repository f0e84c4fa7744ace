"""Sampler distillation: few-step students from a trained diffusion teacher.

    settings.py      the `distill` section of params.yaml (no torch: `dmops config` reads it)
    shared.py        what both methods share: the teacher, a run's provenance, resuming
    progressive.py   progressive distillation (Salimans & Ho 2022): rounds that halve the steps
    consistency.py   consistency distillation (Song et al. 2023): a one-step consistency model
    dmd.py           distribution matching distillation (DMD/DMD2, Yin et al. 2024): a one-step generator
"""
