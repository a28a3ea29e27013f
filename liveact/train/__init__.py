"""Training LiveAct-Nano: synthetic data, the tiny autoencoder, Neighbor Forcing and distillation.

``python -m liveact.train <command> --help`` lists each trainer's options.
"""
