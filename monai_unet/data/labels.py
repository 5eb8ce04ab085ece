"""Label conventions of the membrane data: ISBI 2012 files (0 = membrane, 255 = cell) and training classes.

Files in the ISBI 2012 layout mark membranes black (0) and cell interiors white (255). The 2D bundle trains the
membrane as class 1 (foreground, what Dice and the weight map's borders are about) and writes its predictions back
in the file convention, so a prediction can be compared with, or used as, a label file.
"""

from __future__ import annotations

from monai.config.type_definitions import NdarrayOrTensor

__all__ = ["isbi_label_from_membrane", "isbi_membrane_label"]


def isbi_membrane_label(label: NdarrayOrTensor) -> NdarrayOrTensor:
    """ISBI 2012 label (0 = membrane, 255 = cell) -> class map (1 = membrane, 0 = cell), same type and shape."""
    return (label < 128) * 1.0


def isbi_label_from_membrane(classes: NdarrayOrTensor) -> NdarrayOrTensor:
    """Class map (1 = membrane, 0 = cell) -> ISBI 2012 convention (0 = membrane, 255 = cell), same type and shape."""
    return (classes < 0.5) * 255.0
