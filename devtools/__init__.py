"""Development tools that are not part of the shipped package: the local upstream (a registry,
base and toolkit images and a vendor-style RPM made from Debian packages), the example library
built against it, and the benchmark. Used by tasks.py, noxfile.py and the tests."""
