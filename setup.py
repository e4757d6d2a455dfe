"""kebench: benchmark Knowledge Evolution against its rivals on one training core."""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "kebench" / "version.py").read_text(), version)



class BuildWithRegistry(build_py):
    """Ship the top-level registry.yaml inside the built kebench package (kebench/registry.yaml), where
    `kebench.registry.registry_path` finds it with importlib.resources in any install; a source checkout
    and an editable install keep reading the top-level file."""

    def run(self):
        super().run()
        if not self.dry_run:
            target = Path(self.build_lib) / "kebench" / "registry.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(ROOT / "registry.yaml"), str(target))


setup(
    name="kebench",
    version=version["__version__"],
    description="Benchmark harness for Knowledge Evolution and its rivals on small datasets",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The plugins in methods/ install as kebench.methods (no top-level `methods` package to collide
    # with); registry.yaml's `methods.X:Class` entries fall back to `kebench.methods.X` there.
    packages=find_packages(include=["kebench", "kebench.*"]) + ["kebench.methods"],
    package_dir={"kebench.methods": "methods"},
    cmdclass={"build_py": BuildWithRegistry},
    package_data={"kebench.analysis": ["studies/*.yaml"]},
    # Lower bounds are the features the code uses: torch.amp.GradScaler(device) and
    # torch.load(weights_only=True) (torch 2.3), timm's model registry API (0.9), explicit k-means
    # n_init (scikit-learn 1.2), scipy.stats.false_discovery_control (1.11), click 8.1's
    # standalone_mode errors. No upper bounds: a benchmark records the versions it ran with instead.
    install_requires=[
        "torch>=2.3",
        "torchvision>=0.18",
        "timm>=0.9",
        "numpy>=1.23",
        "scikit-learn>=1.2",
        "scipy>=1.11",
        "pandas>=1.5",
        "rich>=12",
        "click>=8.1",
        "pyyaml>=6",
        "matplotlib>=3.6",
        "submitit>=1.4",
        "pillow>=9",
    ],
    # pytest-xdist: the suite runs on every core (`-n auto`); SLURM tests stay in one worker (loadgroup)
    extras_require={"test": ["pytest", "pytest-timeout", "pytest-xdist"], "tensorboard": ["tensorboard"]},
    entry_points={"console_scripts": ["kebench=kebench.cli:main"]},
)
