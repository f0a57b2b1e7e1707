"""Built-in synthetic face world: faces with known AUs, written in MS-Celeb's, OpenFace's and DISFA's formats.

Entry points: :func:`generate_celeb` / :func:`generate_disfa` (or their ``*_from_config`` forms
taking :class:`SynthCelebConfig` / :class:`SynthDisfaConfig`).
"""

from pipeline.synth.celeb_world import CelebWorldSummary, generate_celeb, generate_celeb_from_config
from pipeline.synth.config import SynthCelebConfig, SynthDisfaConfig
from pipeline.synth.disfa_world import DisfaWorldSummary, generate_disfa, generate_disfa_from_config

__all__ = [
    "CelebWorldSummary",
    "DisfaWorldSummary",
    "SynthCelebConfig",
    "SynthDisfaConfig",
    "generate_celeb",
    "generate_celeb_from_config",
    "generate_disfa",
    "generate_disfa_from_config",
]
