"""Models-from-code entry of the ``detector`` pyfunc (see `defectlab.serving.detector`).

MLflow executes this file when the logged model is loaded; it must only
declare the model object.
"""

from mlflow.models import set_model

from defectlab.serving.detector import DefectDetector

set_model(DefectDetector())
