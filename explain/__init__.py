"""Explaining a classifier: the CAM family (CAM, Grad-CAM, Grad-CAM++) and the overlays and sheets that show it."""
