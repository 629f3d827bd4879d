import re
from pathlib import Path

from setuptools import find_packages, setup

# The version lives in occystrap/__init__.py alone; read it as text, since
# importing the package would need its dependencies before they are
# installed.
VERSION = re.search(
    r'^__version__ = "([^"]+)"$',
    (Path(__file__).parent / "occystrap" / "__init__.py").read_text(
        encoding="utf-8"),
    re.MULTILINE).group(1)

ZSTD = "zstandard>=0.18"
# ISA-L first, where it has wheels; zlib-ng (nearly as fast to inflate)
# elsewhere, so that installing the extra never needs a compiler.
_ISAL_MACHINES = "x86_64 AMD64 aarch64 arm64"
FAST = [f"isal>=1.0; platform_machine in '{_ISAL_MACHINES}'",
        f"zlib-ng>=0.4; platform_machine not in '{_ISAL_MACHINES}'"]

setup(
    name="occystrap",
    version=VERSION,
    description="Fetch container images from registries without Docker or "
                "root, for airgapped networks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(exclude=["tests*"]),
    python_requires=">=3.10",
    install_requires=["click>=8.0", "requests>=2.25"],
    extras_require={
        "zstd": [ZSTD],
        # Without it gzip goes through zlib (occystrap/zlibfast.py).
        "fast": FAST,
        "all": [ZSTD, *FAST],
        # bcrypt: htpasswd files for the registry; cryptography: the test
        # CA and the token service's signed JWTs.
        # The tests check every gzip library the extra may bring.
        "test": ["pytest>=7", ZSTD, "isal>=1.0", "zlib-ng>=0.4", "bcrypt>=3.1",
                 "cryptography>=3.1"],
    },
    entry_points={"console_scripts": ["occystrap=occystrap.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Environment :: Console",
    ],
)
