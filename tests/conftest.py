import os
import sys

# The tests import the project from the checkout, without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
