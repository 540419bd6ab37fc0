"""The run engine: checkpoints, the training loop, model selection and evaluation.

``checkpoint``  the one checkpoint format (runs and the shipped zoo alike) and its reader
``train``       one training loop for every method: seeded, resumable, mixed precision, DDP
``select``      the validation set with synthetic anomalies and the selection score
``evaluate``    the test-split evaluation (the four metrics) and FPS

Taught in ``notebooks/06_train_and_evaluate``. The engine knows methods only through the
contract of :mod:`dap.methods.base`; it never knows which method it runs.
"""
