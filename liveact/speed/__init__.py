"""Making a run fast or small on real hardware: sequence parallelism, FP8, block offload, CUDA graphs,
PyTorch backend flags, host-side work, and the memory planner. Every piece is a transform of a built
model or pipeline; the core never imports this package."""
