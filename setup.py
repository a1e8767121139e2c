"""coupon-spark: personalised coupon distribution on Spark, Delta Lake and Horovod."""
from __future__ import annotations

from setuptools import find_packages, setup

setup(
    name="coupon-spark",
    version="0.1.0",
    description=(
        "Daily, budget-constrained coupon allocation: Spark jobs over Delta Lake, "
        "a Horovod-trained two-tower uplift model and a Lagrangian-dual allocator."
    ),
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["coupon_spark", "coupon_spark.*"]),
    package_data={"coupon_spark": ["py.typed"]},
    install_requires=[
        "pyspark>=4.2,<4.3",
        "pyarrow>=18",
        "pandas>=2,<3",
        "numpy>=2.0,<2.1",
        "deltalake>=1.6,<1.7",
        "delta-spark>=4.4,<4.5",
        "PyYAML>=6",
        "matplotlib>=3.8",  # the evaluation report's plots
    ],
    extras_require={
        # TensorFlow for the two-tower model; horovod itself is built from source
        # afterwards (see Makefile `setup-horovod`): its [spark] extra pins pyarrow<11.
        "train": [
            "tensorflow==2.18.1",
            "tf-keras==2.18.0",
            "cloudpickle",
            "psutil",
            "packaging",
            "cffi",
        ],
        "dev": [
            "pytest>=8",
            "chispa>=0.10",
            "hypothesis>=6",
            "scipy>=1.13",
            "lightgbm>=4.6",  # the uplift learners that bench/model_quality.py measures the model against
            "polars>=1.0",
            "duckdb>=1.1",
            "duckdb-extension-delta",  # the DuckDB delta extension, bundled: no download at run time
            "ruff",
            "mypy",
            "types-PyYAML",
            "pandas-stubs",
            "build",
            "nbclient",  # the analyst notebook is executed by the tests
            "nbformat",
            "ipykernel",
            "selenium>=4.20",  # the HTML report rendered in headless Chromium (Debian's chromium + chromedriver)
        ],
    },
    entry_points={"console_scripts": ["coupon-spark=coupon_spark.cli:main"]},
)
