"""DICOM input and output: series -> Volume (``series``) and label map <-> DICOM SEG (``seg``)."""
