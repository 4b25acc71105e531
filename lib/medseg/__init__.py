"""MedSeg: self-configuring 3D segmentation served through MONAI Label."""
__version__ = "0.1.0"
