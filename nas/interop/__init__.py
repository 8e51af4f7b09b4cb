"""Bridges to other NAS frameworks, each behind an optional extra.

Importing this package imports none of them: ``nas.interop.nni`` needs ``pip install -e '.[nni]'``
(see that module) and raises a one-line ``NasError`` naming the extra when NNI is missing.
"""
