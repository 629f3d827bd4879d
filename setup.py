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
        "zstd": ["zstandard>=0.18"],
        # bcrypt: htpasswd files for the registry; cryptography: the test
        # CA and the token service's signed JWTs.
        "test": ["pytest>=7", "zstandard>=0.18", "bcrypt>=3.1",
                 "cryptography>=3.1"],
    },
    entry_points={"console_scripts": ["occystrap=occystrap.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Environment :: Console",
    ],
)
