"""Coverage-guided fuzz targets (atheris), one module each: `python -m tests.fuzz.<target> [libFuzzer args]`.

A new target is a module here with a fuzz() entry (see harness.py), a line in TARGETS naming its
corpus directory, and a few seed inputs in corpus/<name>/; `make fuzz` and the smoke test pick it up.
"""

# Target module -> its corpus directory under corpus/. Targets that read the same input format share one.
TARGETS = {
    "session": "session",
    # The same target on the pure-Python twins: the compiled modules and the twins must serve it alike.
    "session_twins": "session",
    "ext": "ext",
    "proxy": "proxy",
    "address": "address",
    "config": "config",
    "dsn": "dsn",
}
