"""Build and install inik.

The Triton kernels live in ``kernels/`` and install as ``inik.kernels`` (a PyPI
package is already called ``kernels``).
"""

from setuptools import find_packages, setup

packages = find_packages(include=["inik", "inik.*"]) + ["inik.kernels"]

setup(
    name="inik",
    version="0.1.0",
    description="INIKNet single-image defocus deblurring with a fused IFM operator",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"inik.kernels": "kernels"},
    package_data={"inik": ["weights/*.safetensors", "assets/*"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pillow",
        "safetensors",
        "tqdm",
        "scikit-image",
        "lpips",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["inik=inik.cli:main"]},
)
