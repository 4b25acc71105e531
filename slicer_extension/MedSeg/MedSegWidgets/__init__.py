"""The MedSeg module's panels and scene work: Slicer code (Qt, MRML), kept out of ``MedSeg.py``
so that the widget stays a thin wiring of panels. The logic they call is ``MedSegLib``."""
