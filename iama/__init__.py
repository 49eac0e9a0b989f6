"""IAMA core: rewards, inference-time algorithms and first variations of the IAMA objective.

Pure, typed functions shared by the trainer (``iama_trainer``) and the server (``iama_server``).
"""

__version__ = "0.1.0"
