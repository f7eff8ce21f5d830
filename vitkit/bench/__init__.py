"""vitkit.bench: measurements on the attached device, one module per job of ``python -m vitkit.bench``
(``__main__``); ``machine`` holds what the jobs share, ``rows`` the sweep and stream files' typed rows,
reader and writer. Submodules are imported on demand, so importing this package is cheap.
"""
