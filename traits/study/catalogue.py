"""The metric catalogue moved to :mod:`traits.catalogue`; this name is the same module object, so older imports
(and monkeypatches of its attributes) keep working."""

import sys

from traits import catalogue as _catalogue

sys.modules[__name__] = _catalogue
