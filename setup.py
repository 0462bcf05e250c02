"""Online model evaluation on Apache Beam: reward aggregation, experiment
statistics, bandit router state and batched TensorFlow inference."""

import setuptools

setuptools.setup(
    name="online-eval-pipelines",
    version="0.1.0",
    description=" ".join(__doc__.split()),
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=[
        "pipelines", "pipelines.*", "transforms", "transforms.*",
        "emulators", "emulators.*", "simulation", "simulation.*",
        "reporting", "reporting.*"]),
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "tensorflow-cpu==2.21.0",
        # Beam's TensorFlow model handler imports tensorflow_hub, which needs
        # pkg_resources (removed from setuptools 81).
        "tensorflow-hub",
        "setuptools<81",
        "numpy",
        "scipy",
        "pyarrow",
        "matplotlib",
        "pyyaml",
        # Mergeable quantile sketches (KLL) for quantile metrics.
        "datasketches",
    ],
    extras_require={
        "local": ["bqemulator==1.4.0"],
        "test": ["pytest", "duckdb", "statsmodels", "scikit-learn"],
        # The embedded registry of train_candidate is an SQLite store.
        "mlflow": ["mlflow-skinny", "sqlalchemy", "alembic"],
        "airflow": [
            "apache-airflow==3.3.2",
            "apache-airflow-providers-google",
            "apache-airflow-providers-apache-beam",
        ],
    },
)
