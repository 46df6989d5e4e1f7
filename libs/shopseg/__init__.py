"""shopseg: e-commerce customer segmentation and precision marketing on Apache Spark."""

__version__ = "0.1.0"
