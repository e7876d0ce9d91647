"""defectlab: MLflow-tracked visual anomaly (defect) detection experiments."""

__version__ = "0.1.0"
