"""The sections of benchmarks/gpu_check.py, one module each (context, precision, resnet50, input_path, ddp),
and what they share (common). gpu_check.py is the driver that runs each in its own process."""
