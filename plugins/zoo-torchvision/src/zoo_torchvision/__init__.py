"""zoo-torchvision: torchvision's classification models as zoo backbones.

The plugin itself (its hook implementations) is :mod:`zoo_torchvision.plugin`, exposed through
the entry point ``torchvision`` of the group ``zoo.plugins``.
"""

__version__ = "0.1.0"
