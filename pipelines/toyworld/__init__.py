"""The toy world: a procedural image world, a non-learned judge and small models trained on it.

No model can be downloaded where synthgen is developed and tested, so this package carries a
world in which every generated image can be checked honestly: the generator knows what it drew,
the judge measures what is in any image by plain image analysis, and the shipped models
(diffusion, CLIP, GAN) are small enough to train on a laptop CPU and commit as safetensors.
"""

from pipelines.toyworld.world import Attributes, ShapeSpec, render, sample_attributes

__all__ = ["Attributes", "ShapeSpec", "render", "sample_attributes"]
