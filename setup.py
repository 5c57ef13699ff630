"""The Cython extensions of fastmta and their build switches; metadata lives in pyproject.toml."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = ["lines", "data", "headers", "received"]

directives = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}

setup(
    ext_modules=cythonize(
        [
            Extension(f"fastmta._ext.{name}", [f"fastmta/_ext/{name}.pyx"], extra_compile_args=["-O2"])
            for name in EXTENSIONS
        ],
        compiler_directives=directives,
        annotate=bool(os.environ.get("FASTMTA_CYTHON_ANNOTATE")),
    ),
)
