"""kebench: benchmark Knowledge Evolution against its rivals on one training core."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "kebench" / "version.py").read_text(), version)

setup(
    name="kebench",
    version=version["__version__"],
    description="Benchmark harness for Knowledge Evolution and its rivals on small datasets",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["kebench", "kebench.*", "methods", "methods.*"]),
    # registry.yaml lives at the top level (it is the project's plugin index); installed copies
    # find it under <prefix>/share/kebench.
    data_files=[("share/kebench", ["registry.yaml"])],
    package_data={"kebench": ["studies/*.yaml"]},
    install_requires=[
        "torch",
        "torchvision",
        "timm",
        "scikit-learn",
        "scipy",
        "pandas",
        "rich",
        "click",
        "pyyaml",
        "matplotlib",
        "submitit",
        "pillow",
    ],
    extras_require={"test": ["pytest", "pytest-timeout"], "tensorboard": ["tensorboard"]},
    entry_points={"console_scripts": ["kebench=kebench.cli:main"]},
)
