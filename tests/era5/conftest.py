"""ERA5 tests run dask synchronously (one thread), except where a test asks for threads.

The netCDF4 wheels bundle an HDF5 built without thread safety; xarray serialises its
own reads with a lock, but when a dask compute fails (the bad-input tests do this on
purpose) the other worker threads keep reading while the next test opens files in the
main thread. With threads, about half of the runs crashed inside HDF5; synchronously,
none did. Pipeline jobs exit on the first error, so they never meet that state.
"""

import dask
import pytest


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_dask():
    with dask.config.set(scheduler="synchronous"):
        yield
