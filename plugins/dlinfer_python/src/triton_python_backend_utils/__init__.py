"""``import triton_python_backend_utils as pb_utils`` inside a model.py served by dlinfer.

The names Triton's Python backend offers its models, implemented by dlinfer-python
(:mod:`dlinfer_python.pb_utils`), so a Triton model.py runs unchanged.
"""

from dlinfer_python.pb_utils import *  # noqa: F403 - the module is this package's whole surface
from dlinfer_python.pb_utils import __all__ as __all__
