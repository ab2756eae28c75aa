"""More checkpoint key layouts, one file each, registered into CONVERTERS and `format: auto` detection
(roli.backbones.convert.detects): robustbench, torchvision_swin, open_clip, convnext_fb, xcit."""

from roli.registry import import_submodules

import_submodules(__name__, __path__)
