"""Hyperspectral plant cubes: readers (ENVI, camera .bil, HDF5), calibration, bands, mask, tiles."""
